"""The admin API: create, read, update and delete every domain object."""
