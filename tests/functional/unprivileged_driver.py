#    Licensed under the Apache License, Version 2.0 (the "License"); you may
#    not use this file except in compliance with the License. You may obtain
#    a copy of the License at
#
#         http://www.apache.org/licenses/LICENSE-2.0
#
#    Unless required by applicable law or agreed to in writing, software
#    distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#    WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#    License for the specific language governing permissions and limitations
#    under the License.
"""The driver as cinder-volume runs it, in a process of its own.

test_unprivileged.py starts this module as an unprivileged user::

    python -m tests.functional.unprivileged_driver CINDER_CONF BACKEND

It sets up oslo.config, logging and oslo.privsep the way
``cinder/cmd/volume.py`` does, so every command the driver runs as root
goes through ``sudo cinder-rootwrap <rootwrap_config>`` (Cinder's real
``utils.execute``) and every privsep entry point through the same root
helper. The test drives it one step at a time, one JSON object per line
on stdin (``{"step": "create_volume", "volume": ID, "size": 1}``), and
does its iSCSI I/O between steps. Each step is answered by one line on
stdout: ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": ...}``.
Anything else the process prints goes to stderr.
"""

import json
import os
import shlex
import sys
import traceback

from oslo_config import cfg
from oslo_log import log as logging
from oslo_privsep import priv_context

from cinder.common import config  # noqa: F401 (Cinder's options)
from cinder import context
from cinder import utils
from cinder.volume import configuration
from cinder.volume import driver as cinder_driver

from fuse_cinder.allinone import sandbox
from fuse_cinder import driver
from tests.functional import volumes

CONF = cfg.CONF
CTX = context.get_admin_context()


class Backend:
    """One FuseISCSIDriver and the Cinder objects it was handed."""

    def __init__(self, backend):
        conf = configuration.Configuration(cinder_driver.volume_opts,
                                           config_group=backend)
        self.driver = driver.FuseISCSIDriver(configuration=conf,
                                             host='unprivileged@' + backend)
        # Cinder's drivers use its DB module; these volumes are in no DB,
        # so CHAP lives on the volume objects (provider_auth) only, as in
        # tools/benchmark.py.
        self.driver.db = self.driver.target_driver.db = sandbox.NoDB()
        self.volumes = {}
        self.snapshots = {}

    def _new_volume(self, volume, size):
        self.volumes[volume] = volumes.volume(volume, size=size)
        return self.volumes[volume]

    # Steps: one per driver call, named after it.

    def setup(self, volumes_home):
        """Who we are, what we may see ourselves, then do_setup."""
        try:
            os.listdir(volumes_home)
            listing = 'allowed'
        except OSError as exc:
            listing = type(exc).__name__
        self.driver.do_setup(CTX)
        self.driver.check_for_setup_error()
        return {'uid': os.getuid(), 'euid': os.geteuid(),
                'gid': os.getgid(), 'groups': os.getgroups(),
                'list_volumes_home': listing}

    def create_volume(self, volume, size):
        self.driver.create_volume(self._new_volume(volume, size))

    def create_snapshot(self, snapshot, volume):
        snap = volumes.snapshot(self.volumes[volume], snapshot)
        self.snapshots[snapshot] = snap
        self.driver.create_snapshot(snap)

    def create_cloned_volume(self, volume, size, source):
        self.driver.create_cloned_volume(self._new_volume(volume, size),
                                         self.volumes[source])

    def create_volume_from_snapshot(self, volume, size, snapshot):
        self.driver.create_volume_from_snapshot(
            self._new_volume(volume, size), self.snapshots[snapshot])

    def extend_volume(self, volume, size):
        vol = self.volumes[volume]
        self.driver.extend_volume(vol, size)
        vol.size = size

    def create_export(self, volume, connector):
        """validate_connector and create_export, as the manager calls them.

        The model update goes on the volume, as the manager saves it.
        """
        vol = self.volumes[volume]
        self.driver.validate_connector(connector)
        update = self.driver.create_export(CTX, vol, connector) or {}
        for key, value in update.items():
            setattr(vol, key, value)

    def ensure_export(self, volume):
        return self.driver.ensure_export(CTX, self.volumes[volume])

    def initialize_connection(self, volume, connector):
        return self.driver.initialize_connection(self.volumes[volume],
                                                 connector)

    def terminate_connection(self, volume, connector):
        self.driver.terminate_connection(self.volumes[volume], connector)

    def remove_export(self, volume):
        self.driver.remove_export(CTX, self.volumes[volume])
        self.volumes[volume].provider_location = None

    def get_volume_stats(self):
        return self.driver.get_volume_stats(refresh=True)

    def delete_snapshot(self, snapshot):
        self.driver.delete_snapshot(self.snapshots.pop(snapshot))

    def delete_volume(self, volume):
        self.driver.delete_volume(self.volumes.pop(volume))


def serve(backend, requests, answers):
    """Run the steps read from ``requests`` until it ends."""
    for line in requests:
        request = json.loads(line)
        step = request.pop('step')
        try:
            answer = {'ok': True,
                      'result': getattr(backend, step)(**request)}
        except Exception as exc:
            answer = {'ok': False,
                      'error': '%s: %s' % (type(exc).__name__, exc),
                      'traceback': traceback.format_exc()}
        answers.write(json.dumps(answer, default=str) + '\n')
        answers.flush()


def main(argv):
    # Keep stdout for the answers; stray output goes to stderr.
    answers = os.fdopen(os.dup(1), 'w')
    os.dup2(2, 1)
    conf_file, backend = argv[1:3]
    CONF(['--config-file', conf_file], project='cinder')
    logging.setup(CONF, 'cinder')
    # As cinder/cmd/volume.py does: privsep daemons start through the
    # root helper, i.e. sudo cinder-rootwrap.
    priv_context.init(root_helper=shlex.split(utils.get_root_helper()))
    serve(Backend(backend), sys.stdin, answers)


if __name__ == '__main__':
    main(sys.argv)
