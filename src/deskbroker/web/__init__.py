"""The browser's side of the broker: the user portal (``/portal/``), the admin console
(``/console/``) and the API docs page, as static pages and scripts that call the REST
API. ``pages/`` holds the HTML, ``static/`` our scripts and styles, ``static/vendor/``
the npm assets ``make portal-assets`` copies in (never committed). Served by
``deskbroker.api.web``."""
