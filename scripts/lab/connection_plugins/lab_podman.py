"""containers.podman.podman with pipelining, for the lab.

The collection's podman connection runs `podman exec` without `-i`, so it cannot pipeline and
every task costs five `podman exec` calls (mkdir, put, chmod, run, rm; about 0.25 s each with
runc). With stdin attached, a pipelined task is a single `podman exec -i`.
"""

from __future__ import annotations

import shlex

from ansible.module_utils.common.text.converters import to_native
from ansible_collections.containers.podman.plugins.connection import podman as _podman
from ansible_collections.containers.podman.plugins.connection.podman import (
    Connection as _PodmanConnection,
)

DOCUMENTATION = _podman.DOCUMENTATION.replace("name: podman", "name: lab_podman", 1).replace(
    "short_description: Interact with an existing podman container",
    "short_description: podman connection with pipelining (lab)",
    1,
)


class Connection(_PodmanConnection):
    transport = "lab_podman"
    has_pipelining = True

    def exec_command(self, cmd, in_data=None, sudoable=False):
        if in_data is None:
            return super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        if not self._connected:
            self._connect()
        # ConnectionBase.exec_command only records the call; skip the parent's podman exec.
        super(_PodmanConnection, self).exec_command(cmd, in_data=in_data, sudoable=sudoable)
        args = shlex.split(to_native(cmd, errors="surrogate_or_strict"))
        exec_args = ["exec", "-i"]
        if self.user:
            exec_args.extend(("--user", self.user))
        return self._podman(exec_args, args, in_data)
