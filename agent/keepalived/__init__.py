"""keepalived support: render a node's configuration, lint a cluster's, record VRRP transitions."""
