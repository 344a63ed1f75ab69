#!/bin/sh
# Evaluation only: the compose stack's Valkey (infra/compose/compose.yaml, service `redis`), with the
# user names from the chart's values. Writes the configuration with the ACL users (only their
# passwords' SHA-256) to a 0600 file at start, so no password is on the command line.
set -eu
umask 077
h() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
conf=/tmp/valkey.conf
cat >"$conf" <<CONF
bind 0.0.0.0
port 6379
protected-mode yes
dir /data
appendonly yes
# Anonymous clients get NOAUTH.
user default off resetpass resetkeys resetchannels -@all
# Operator and health check.
user admin on #$(h "$VALKEY_ADMIN_PASSWORD") ~* &* +@all
# Celery brokers (db 0 trainer, db 1 Airflow): everything but KEYS, CONFIG, FLUSHALL, DEBUG...
user $VALKEY_TRAINER_USERNAME on #$(h "$VALKEY_TRAINER_PASSWORD") ~* &* +@all -@dangerous
user $VALKEY_AIRFLOW_USERNAME on #$(h "$VALKEY_AIRFLOW_PASSWORD") ~* &* +@all -@dangerous
# Alias moves: the gateway may only publish on their channel, inference only listen to it.
user $VALKEY_GATEWAY_USERNAME on #$(h "$VALKEY_GATEWAY_PASSWORD") resetkeys resetchannels &mlops:alias-moves -@all +publish +ping +hello +client|setinfo +client|setname
user $VALKEY_INFERENCE_USERNAME on #$(h "$VALKEY_INFERENCE_PASSWORD") resetkeys resetchannels &mlops:alias-moves -@all +subscribe +unsubscribe +ping +hello +client|setinfo +client|setname
CONF
# The server needs none of them (the probes get REDISCLI_AUTH from the container).
unset VALKEY_ADMIN_PASSWORD VALKEY_TRAINER_PASSWORD VALKEY_AIRFLOW_PASSWORD \
  VALKEY_GATEWAY_PASSWORD VALKEY_INFERENCE_PASSWORD REDISCLI_AUTH
exec valkey-server "$conf"
