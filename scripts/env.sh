# streamml settings: source this file (`. scripts/env.sh`) after editing, or export the variables yourself.
# Every variable is optional; the defaults serve one machine with no setup (DESIGN §7).

# Kafka bootstrap servers. Unset: the embedded broker on 127.0.0.1:9092 (`streamml up` starts it).
# export STREAMML_BOOTSTRAP_SERVERS=kafka1:9092,kafka2:9092
# Client defaults: `embedded` (Tansu quirks) when no servers are set, else `kafka` (Apache Kafka's).
# export STREAMML_KAFKA_PROFILE=kafka
# JSON file with {"common":{...},"producer":{...},"consumer":{...},"admin":{...}} kafka-python overrides
# (security, sizes) for a production cluster.
# export STREAMML_KAFKA_CONFIG=/etc/streamml/kafka.json
# For SCRAM, the credentials go in that file and nowhere else:
#   {"common": {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
#               "sasl_plain_username": "...", "sasl_plain_password": "..."}}
# Where `streamml broker --engine kafka` (Apache Kafka 4.4 from Maven Central, needs Java 17 and Maven) keeps its jars.
# export STREAMML_KAFKA_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/streamml/kafka-4.4.0"

# Where events, training CSVs, models and executed run notebooks live (default: var/ in the checkout).
# Always made absolute and handed on to papermill kernels, Voila and notebook tests.
# export STREAMML_HOME=/srv/streamml

# Database. Default sqlite:///$STREAMML_HOME/streamml.db; production MySQL/MariaDB:
# export STREAMML_DB_URL=mysql+pymysql://streamml:secret@db-host/streamml

# Feature columns per training row (the label follows). A champion trained on another count is not served.
# export STREAMML_N_FEATURES=3

# Partitions of each topic `streamml topics` creates (the unit of parallelism of `streamml predictions`).
# export STREAMML_PARTITIONS=1

# Bearer token for mutating HTTP routes (build, rollback). Unset: those routes answer 403.
# export STREAMML_API_TOKEN=change-me

# Topic names (defaults are the 2018 system's).
# export STREAMML_EVENT_TOPIC=event_topic
# export STREAMML_TRAINING_DATA_TOPIC=training_data_topic
# export STREAMML_PREDICTION_REQUEST_TOPIC=prediction_request_topic
# export STREAMML_PREDICTION_RESPONSE_TOPIC=prediction_response_topic
# export STREAMML_DEAD_LETTER_TOPIC=dead_letter_topic
# export STREAMML_MODEL_UPDATE_TOPIC=model_update_topic

# Largest event or request accepted, and where HTTP services listen.
# export STREAMML_MAX_MESSAGE_BYTES=65536
# export STREAMML_HOST=127.0.0.1 STREAMML_HTTP_PORT=8000 STREAMML_DASHBOARD_PORT=8866

# Labels a training row may carry, lo:hi inclusive integers; a row outside is a dead letter with the reason.
# export STREAMML_LABEL_RANGE=0:10

# Log level of every service (DEBUG, INFO, WARNING, ERROR).
# export STREAMML_LOG_LEVEL=INFO

# Dashboard token (Voila's): visitors open the URL with ?token=.... Unset: no token on a loopback host (127.0.0.1),
# a fresh one printed at start on any other interface. At most 4 live kernels (`streamml dashboard --max-kernels`).
# export STREAMML_DASHBOARD_TOKEN=change-me

# Retraining policy (JSON text or a file path; default $STREAMML_HOME/retrain.json), re-read while `events` runs.
# export STREAMML_RETRAIN_POLICY='{"default": {"drift_threshold": 0.15, "min_rows": 200, "cooldown_s": 600}}'

# Builds: seconds a training notebook may run (kernel start included); address space of the papermill child and its
# kernel in MiB (0: no limit); builds of one model waiting at once (more are refused, HTTP 429); CPU niceness of the
# child (0-19); promote when the metric is at least the champion's minus this; seconds without a heartbeat before
# another host takes a build lock over.
# export STREAMML_BUILD_TIMEOUT=900 STREAMML_BUILD_MEMORY_MB=8192 STREAMML_BUILD_MAX_QUEUED=3
# export STREAMML_BUILD_NICENESS=10 STREAMML_BUILD_TOLERANCE=0 STREAMML_BUILD_STALE_AFTER=120

# The checkout whose nbs/train/ holds the training notebooks (default: found from the package or the working folder).
# export STREAMML_PROJECT=/opt/streamml
