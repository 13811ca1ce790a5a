"""Cluster mode on Ray: the Ray Serve deployment of the server, parallel fit jobs, the local
test cluster helpers. Needs the ``cluster`` extra (``pip install 'factory-inspect[cluster]'``)."""
