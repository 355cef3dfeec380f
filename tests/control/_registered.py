"""A process that registers one instance and waits (killed by tests/control)."""

from __future__ import annotations

import dataclasses
import sys
import time

from config import load_config
from control import ControlConfig, Endpoint, ServiceControl

endpoint, prefix, instance, state_dir, credentials_dir = sys.argv[1:6]
cfg = load_config()
cfg = dataclasses.replace(
    cfg,
    node=dataclasses.replace(cfg.node, state_dir=state_dir),
    control=ControlConfig(
        endpoints=(endpoint,), prefix=prefix, lease_ttl_s=2, credentials_dir=credentials_dir
    ),
)
plane = ServiceControl(cfg, component="detector", instance=instance)
plane.start()
plane.announce({"flows": Endpoint("tcp://127.0.0.1:5999", "push", "flows")})
print("ready", flush=True)
while True:
    time.sleep(1)
