"""Flask app factory, views, Socket.IO handlers and the REST API."""
