"""Settings of the example project: Django's own tables in SQLite, tasks in
wasmq (`wasmq serve` at WASMQ_URL, token in WASMQ_TOKEN_FILE if it has one)."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "example-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "mysite.urls"
USE_TZ = True

INSTALLED_APPS = ["shop"]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB", BASE_DIR / "db.sqlite3"),
    }
}

TASKS = {
    "default": {
        "BACKEND": "wasmq_client.django.WasmqBackend",
        "QUEUES": ["default", "reports"],
        "OPTIONS": {
            "URL": os.environ.get("WASMQ_URL", "http://127.0.0.1:8080"),
            "TOKEN_FILE": os.environ.get("WASMQ_TOKEN_FILE"),
            # Task -> wasmq module (NAME or NAME@VERSION); without an entry,
            # a task runs as the module named like its function.
            "MODULES": {
                "shop.tasks.order_total": {"module": "order_total", "max_attempts": 1},
            },
        },
    }
}
