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
"""Fixtures for the functional suites: real FUSE mounts."""

import pytest

from tests.functional import faultfs


@pytest.fixture
def make_fs(tmp_path, request):
    """Mount a FaultFS over tmp_path/backing; unmounted whatever happens."""
    def make(**kwargs):
        backing = tmp_path / 'backing'
        backing.mkdir()
        handle = faultfs.FaultFS(str(backing), str(tmp_path / 'mnt'),
                                 log_path=str(tmp_path / 'faultfs.log'),
                                 **kwargs)
        request.addfinalizer(handle.stop)  # before start: a failed start too
        handle.start()
        return handle
    return make


@pytest.fixture
def fs(make_fs):
    return make_fs()
