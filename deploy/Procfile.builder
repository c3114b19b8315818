# Builder/ingester host: ingests event_topic (its share of the partitions) and runs builds (one per model at a time
# across every builder host). Environment: deploy/streamml.env. tests/test_hosts.py runs exactly these commands.
events: streamml events
