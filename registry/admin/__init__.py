"""The admin: where operators configure upstreams, keys, models and voices, and review the audit log.

One module per subject; importing them registers their pages with the site (registry/admin_site.py).
"""

from registry.admin import (  # noqa: F401  registers the admins
    dashboard,
    keys,
    processes,
    request_log,
    speech,
    upstreams,
    voices,
)
