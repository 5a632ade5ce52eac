"""The operator port: metrics and health for whoever runs the service."""
