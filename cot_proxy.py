"""Entry point: `gunicorn -c gunicorn.conf.py cot_proxy:app`, or `python cot_proxy.py` for Flask's dev server."""

import sys

from app import create_app
from app.config import ConfigError

try:
    app = create_app()
except ConfigError as exc:
    print(f"cot-proxy: configuration error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None

if __name__ == "__main__":
    cfg = app.config["COT"]
    app.run(host=cfg.host, port=cfg.port, threaded=True, debug=False)
