from mlops_common.db import run_migrations_online
from trainer.jobs import Base

run_migrations_online(Base.metadata)
