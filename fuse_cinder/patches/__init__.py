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
"""Patches adding explicit export actions to an installed Cinder.

A volume driver cannot add REST actions, so the ``os-export`` and
``os-delete-export`` volume actions ship as unified diffs against the
pristine Cinder release named in ``CINDER_VERSION``, applied in the order
of the ``series`` file with ``patch -p1`` (or ``git apply``) from the
directory that holds the ``cinder`` package (site-packages).
``fuse-cinder-patch check|apply|revert`` does that safely.

What they change:

0001
    ``fields.VolumeStatus`` gains ``exporting``, ``exported``,
    ``delete_exporting`` and ``error_exporting`` (so ``reset-state``
    accepts them), and ``db.volume_detached`` leaves those statuses alone.
0002
    Policy rules ``volume_extension:volume_actions:export`` and
    ``...:delete_export``, default admin or a member of the owning project.
0003
    JSON schemas, the controller actions (``os-export`` answers 200 with
    ``{"connection_info": ...}``, ``os-delete-export`` 202, a timeout 504)
    and ``volume.API.export`` / ``delete_export``: the backend's
    capabilities first (``fuse_cinder_export`` from the driver, the export
    RPC version from the volume service, ``fuse_cinder_export_readonly``
    for a read-only volume; 400 otherwise; requests that arrive while
    one asks the scheduler take its answer), then the status by
    compare-and-swap. A timeout leaves ``error_exporting``; delete-export
    is accepted from every export status. Attach, detach,
    ``os-initialize_connection`` and ``os-terminate_connection`` refuse an
    exported volume; extend accepts it.
0004
    ``VolumeExportAPI``: the export RPC API 1.0 (``export_volume`` and
    ``delete_volume_export``, synchronous calls) in the oslo.messaging
    namespace ``fuse_cinder.volume_export``. Cinder's volume RPC API and
    its version are untouched, so no upstream release can collide with it.
0005
    The volume manager side: ``VolumeExportEndpoint`` (an additional
    endpoint), the RPC version in the published capabilities, a
    compare-and-swap status check before the backend is touched, one
    request per volume at a time, ``create_export`` /
    ``initialize_connection`` / ``_parse_connection_options`` on export,
    ``terminate_connection`` / ``remove_export`` on delete-export,
    notifications, a worker entry per running request (``_do_cleanup``
    rolls back this service's own), ``init_host`` re-creating the targets
    of exported volumes (saving new CHAP); detach never removes the target
    of an exported volume; extend keeps it exported.
0006
    ``MAPPING`` entry so ``cinder.volume.drivers.fuse.FuseISCSIDriver``
    (the driver's original class path) still loads.

No new API microversion gates the actions: python-cinderclient 9.x only
knows microversions up to 3.71, so a gate at 3.72 would be unreachable
from the ``cinder`` command.  Clients discover the feature by trying it:
an unpatched API answers 400 "no such action".

To rebase onto another Cinder release: copy the touched files (listed in
each patch's ``+++`` lines) of the pristine release into two trees, edit
one, regenerate each patch with ``diff -u --label a/PATH --label b/PATH``
keeping its header, and update ``CINDER_VERSION``.
"""

import os

CINDER_VERSION = '29.0.0'
PATCH_DIR = os.path.dirname(os.path.abspath(__file__))
SERIES_FILE = os.path.join(PATCH_DIR, 'series')


def series() -> list[str]:
    """Absolute paths of the patches, in the order they apply."""
    paths = []
    with open(SERIES_FILE) as f:
        for line in f:
            name = line.split('#', 1)[0].strip()
            if name:
                paths.append(os.path.join(PATCH_DIR, name))
    return paths


def touched_files(patch_path: str) -> list[str]:
    """Paths (relative to site-packages) that a patch modifies."""
    files = []
    with open(patch_path) as f:
        for line in f:
            if line.startswith('+++ '):
                path = line[4:].split('\t', 1)[0].strip()
                path = path.split('/', 1)[1] if '/' in path else path
                if path not in files:
                    files.append(path)
    return files
