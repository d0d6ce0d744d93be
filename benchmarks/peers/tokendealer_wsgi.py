"""TokenDealer's Flask app as a plain WSGI factory (no edge), for the serving-core comparison: granian's
WSGI interface reads the body in a blocking thread, without a deadline."""

from __future__ import annotations

import os

from flask import Flask

from tokendealer.app import create_app as create_tokendealer
from tokendealer.config import Config


def create_app() -> Flask:
    return create_tokendealer(Config.load(), processes=int(os.environ.get("WORKERS", "2")), serving=True)
