"""Storage: SQLAlchemy tables, repositories and migrations; the only place with SQL."""
