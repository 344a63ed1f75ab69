-- Runs once, on an empty data volume, as POSTGRES_USER (the owner of everything below).
-- airflow: Airflow's metadata and Celery results; mlflow_db: MLflow's tracking and registry store;
-- mlflow_auth: the users and permissions of MLflow's login (its basic-auth app);
-- platform: the services' own state (training jobs, alias audit), one version table per service.
CREATE DATABASE airflow;
CREATE DATABASE mlflow_db;
CREATE DATABASE mlflow_auth;
CREATE DATABASE platform;
