"""What the gateway shows of itself: metrics, per-route traffic, the status view, the admin
server."""
