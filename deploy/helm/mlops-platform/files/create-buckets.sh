#!/bin/sh
# Evaluation only: compose's one-shot `create-buckets` job (infra/compose/compose.yaml) as MinIO's
# root: the two buckets, one user and policy per component. Idempotent: a later run updates the
# policies and sets the secrets again.
#   mlflow: read/write/list mlflow          trainer: read/list data; read/write/list mlflow
#   gateway: read/list mlflow               inference: read/list mlflow; write data/predictions/*
#   airflow: read/write/list data           and data/feedback/* (its logs)
#   user (operator, tests; optional): both, read/write/list
set -eu
umask 077
export MC_CONFIG_DIR=/tmp/.mc
# The alias from the environment (MC_HOST_<alias>), not from `mc alias set` arguments.
export MC_HOST_platform="http://${S3_ACCESS_KEY}:${S3_SECRET_KEY}@${S3_ENDPOINT_URL#http://}"
tries=0
until mc ready platform >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -ge 150 ]; then
        echo "create-buckets: MinIO at $S3_ENDPOINT_URL is not ready" >&2
        exit 1
    fi
    sleep 2
done
mc mb --ignore-existing "platform/$MLFLOW_BUCKET" "platform/$DATA_BUCKET"
# policy NAME RW_BUCKETS RO_BUCKETS [STATEMENTS,]: read/write/list on the first, read/list on the
# second, and any further statements as they are.
policy() {
    stmts="${4:-}"
    for b in $2; do
        stmts="$stmts{\"Effect\":\"Allow\",\"Action\":[\"s3:GetBucketLocation\",\"s3:ListBucket\",\"s3:ListBucketMultipartUploads\"],\"Resource\":[\"arn:aws:s3:::$b\"]},"
        stmts="$stmts{\"Effect\":\"Allow\",\"Action\":[\"s3:GetObject\",\"s3:PutObject\",\"s3:DeleteObject\",\"s3:AbortMultipartUpload\",\"s3:ListMultipartUploadParts\"],\"Resource\":[\"arn:aws:s3:::$b/*\"]},"
    done
    for b in $3; do
        stmts="$stmts{\"Effect\":\"Allow\",\"Action\":[\"s3:GetBucketLocation\",\"s3:ListBucket\"],\"Resource\":[\"arn:aws:s3:::$b\"]},"
        stmts="$stmts{\"Effect\":\"Allow\",\"Action\":[\"s3:GetObject\"],\"Resource\":[\"arn:aws:s3:::$b/*\"]},"
    done
    printf '{"Version":"2012-10-17","Statement":[%s]}\n' "${stmts%,}" >"/tmp/mlops-$1.json"
    mc admin policy create platform "mlops-$1" "/tmp/mlops-$1.json"
}
policy mlflow "$MLFLOW_BUCKET" ""
policy trainer "$MLFLOW_BUCKET" "$DATA_BUCKET"
policy model-read "" "$MLFLOW_BUCKET"
policy inference "" "$MLFLOW_BUCKET" "{\"Effect\":\"Allow\",\"Action\":[\"s3:PutObject\"],\"Resource\":[\"arn:aws:s3:::$DATA_BUCKET/predictions/*\",\"arn:aws:s3:::$DATA_BUCKET/feedback/*\"]},"
policy airflow "$DATA_BUCKET" ""
policy user "$DATA_BUCKET $MLFLOW_BUCKET" ""
# user NAME ACCESS_KEY SECRET_KEY POLICY
user() {
    mc admin user add platform "$2" "$3" >/dev/null
    mc admin policy attach platform "mlops-$4" --user "$2" >/dev/null 2>&1 || true
    case "$(mc admin user info platform "$2")" in
        *"mlops-$4"*) ;;
        *) echo "S3 identity $1: policy mlops-$4 is not attached" >&2; exit 1 ;;
    esac
    echo "S3 identity $1 ($2): policy mlops-$4"
}
user mlflow "$S3_MLFLOW_ACCESS_KEY" "$S3_MLFLOW_SECRET_KEY" mlflow
user trainer "$S3_TRAINER_ACCESS_KEY" "$S3_TRAINER_SECRET_KEY" trainer
user gateway "$S3_GATEWAY_ACCESS_KEY" "$S3_GATEWAY_SECRET_KEY" model-read
user inference "$S3_INFERENCE_ACCESS_KEY" "$S3_INFERENCE_SECRET_KEY" inference
user airflow "$S3_AIRFLOW_ACCESS_KEY" "$S3_AIRFLOW_SECRET_KEY" airflow
if [ -n "${S3_USER_ACCESS_KEY:-}" ]; then
    user user "$S3_USER_ACCESS_KEY" "$S3_USER_SECRET_KEY" user
fi
