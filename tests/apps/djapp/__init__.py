"""A minimal Django project configured in code (no database) for tests/it/frameworks.rs.
It serves the same URLs with the same JSON shapes as tests/apps/flask_app.py."""
