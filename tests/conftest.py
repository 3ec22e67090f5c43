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

"""Fixtures shared by the unit and functional suites."""

import pytest

from cinder.volume import configuration
from cinder.volume import driver as cinder_driver
from oslo_config import cfg

from fuse_cinder import options

GROUP = 'fuse_test'


@pytest.fixture
def backend_conf():
    """A backend section of our own, cleared after the test."""
    conf = configuration.Configuration(cinder_driver.volume_opts,
                                       config_group=GROUP)
    conf.append_config_values(options.fuse_opts + options.tgt_opts)
    touched = []

    def set_opts(**values):
        for name, value in values.items():
            cfg.CONF.set_override(name, value, group=GROUP)
            touched.append(name)
        return conf

    # No background watch unless a test asks for one: tests call
    # watch_once themselves, and a tick must not outlive its test's tgtd.
    set_opts(volume_backend_name='fuse-test', fuse_watch_interval=0)
    yield set_opts
    for name in touched:
        cfg.CONF.clear_override(name, group=GROUP)
