"""The node↔manager protocol on the cluster port: typed messages, one server, one client."""
