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
"""Cinder's logging fake driver, able to export, seen from a test.

Loaded by the all-in-one of test_export_api.py as its volume driver
(``tests.functional.export_test_driver.ExportTestDriver``).  It reports
the os-export capabilities, and in ``<state_path>``:

``driver-actions.log``
    one JSON line per create_export, initialize_connection,
    terminate_connection, remove_export and extend_volume: what the
    backend was asked to do, for the test to check what was (not) done.
``delay-<action>``
    a number of seconds: the next ``<action>`` sleeps that long first
    (the file is consumed), to make a request slow or late.
    ``delay-claim`` delays an os-export in the volume service before its
    status check, the way a message waiting in a queue is late.
"""

import json
import os
import sys
import time

from oslo_config import cfg

from cinder.tests import fake_driver

CONF = cfg.CONF
CAPABILITIES = {'fuse_cinder_export': True,
                'fuse_cinder_export_readonly': True}


def _path(name):
    return os.path.join(CONF.state_path, name)


def _maybe_delay(action):
    path = _path('delay-' + action)
    try:
        with open(path) as f:
            seconds = float(f.read().strip() or 0)
        os.unlink(path)
    except (OSError, ValueError):
        return
    time.sleep(seconds)


def _log(action, volume, **extra):
    entry = dict(extra, action=action, volume_id=volume['id'],
                 time=time.time())
    with open(_path('driver-actions.log'), 'a') as f:
        f.write(json.dumps(entry, sort_keys=True) + '\n')


def _in_export_request():
    frame = sys._getframe(1)
    while frame is not None:
        # _export_volume since issue 12, export_volume before it.
        if frame.f_code.co_name in ('_export_volume', 'export_volume'):
            return True
        frame = frame.f_back
    return False


class ExportTestDriver(fake_driver.FakeLoggingVolumeDriver):

    @property
    def initialized(self):
        # The manager's first look at the driver, before its status check:
        # a delay here is a late os-export message.
        if _in_export_request():
            _maybe_delay('claim')
        return self._initialized

    def get_volume_stats(self, refresh=False):
        stats = dict(super().get_volume_stats(refresh) or {})
        stats.update(CAPABILITIES)
        for pool in stats.get('pools') or ():
            pool.update(CAPABILITIES)
        return stats

    def create_export(self, context, volume, connector):
        _maybe_delay('create_export')
        _log('create_export', volume,
             access_mode=(connector or {}).get('access_mode'))
        return super().create_export(context, volume, connector)

    def initialize_connection(self, volume, connector):
        _log('initialize_connection', volume,
             initiator=(connector or {}).get('initiator'))
        return super().initialize_connection(volume, connector)

    def terminate_connection(self, volume, connector, **kwargs):
        _log('terminate_connection', volume)
        return super().terminate_connection(volume, connector, **kwargs)

    def remove_export(self, context, volume):
        _log('remove_export', volume)
        return super().remove_export(context, volume)

    def extend_volume(self, volume, new_size):
        _log('extend_volume', volume, new_size=new_size)
        return super().extend_volume(volume, new_size)
