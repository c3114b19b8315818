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
