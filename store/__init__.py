"""The job store: SQLAlchemy models and queries shared by the HTTP service and the workers."""
