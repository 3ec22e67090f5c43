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
"""The driver implements Cinder's driver interfaces.

Cinder's own compliance check lists interface methods with
inspect.ismethod, which finds nothing on Python 3 classes, so it passes
for any driver. This test lists plain functions instead.
"""

import inspect

import pytest

from cinder import interface
from cinder.interface import volume_driver
from cinder.interface import volume_manageable_driver
from cinder.interface import volume_snapshot_revert
from cinder.volume import driver as cinder_driver

from fuse_cinder import driver

INTERFACES = [
    volume_driver.VolumeDriverCore,
    volume_manageable_driver.VolumeManagementDriver,
    volume_manageable_driver.VolumeListManageableDriver,
    volume_snapshot_revert.VolumeSnapshotRevertDriver,
]

# Our own work, not something a base class happens to provide.
OWN = {
    'do_setup', 'check_for_setup_error', 'create_volume', 'delete_volume',
    'extend_volume', 'create_snapshot', 'delete_snapshot',
    'create_volume_from_snapshot', 'initialize_connection',
    'terminate_connection', 'copy_image_to_volume', 'copy_volume_to_image',
    'manage_existing', 'manage_existing_get_size', 'unmanage',
    'get_manageable_volumes', 'get_manageable_snapshots',
    'revert_to_snapshot',
}


def interface_functions(iface):
    return {name: func for name, func in
            inspect.getmembers(iface, inspect.isfunction)
            if not name.startswith('__')}


def test_interface_listing_is_not_empty():
    core = interface_functions(volume_driver.VolumeDriverCore)
    assert {'create_volume', 'get_volume_stats'} <= set(core)
    assert len(core) > 20


@pytest.mark.parametrize('iface', INTERFACES, ids=lambda i: i.__name__)
def test_every_interface_function_is_implemented(iface):
    for name, func in interface_functions(iface).items():
        impl = inspect.getattr_static(driver.FuseISCSIDriver, name, None)
        if isinstance(impl, property):
            continue   # Cinder's base driver exposes these as properties
        impl = getattr(driver.FuseISCSIDriver, name, None)
        assert callable(impl), name
        assert impl is not func, '%s is only the interface stub' % name
        # Cinder calls these positionally and names differ in its own base
        # classes (ctxt/context), so compare how many arguments fit.
        wanted = inspect.signature(func).parameters
        got = inspect.signature(impl).parameters
        has_varargs = any(p.kind == p.VAR_POSITIONAL for p in got.values())
        assert has_varargs or len(got) >= len(wanted), name


def test_own_methods_are_not_inherited():
    for name in OWN:
        assert name in vars(driver.FuseISCSIDriver), name


def test_driver_is_registered_and_an_iscsi_driver():
    assert issubclass(driver.FuseISCSIDriver, cinder_driver.ISCSIDriver)
    assert driver.FuseISCSIDriver in interface._volume_register
