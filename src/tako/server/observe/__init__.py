"""What tako-server observes of the traffic it proxies: per-app counters, request ids, access logs."""
