"""HTTP API: routers per audience (admin, client), schemas and error rendering."""
