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
"""A noauth client of the all-in-one's API, and its self-check."""

from collections.abc import Callable
from collections.abc import Container
import importlib.util
import json
import os
import shlex
import site
import subprocess
import sys
import time
from typing import Any
import urllib.error
import urllib.request
import uuid

from fuse_cinder.allinone import errors
from fuse_cinder.allinone import sandbox

MiB = 1 << 20

#: A JSON body, as the API sends it (an error page may come as text).
Body = Any
#: Where the self-check says what it did, a line at a time.
Out = Callable[[str], None]


class Api(object):
    """Minimal client of the noauth Cinder API, for readiness and checks.

    The launcher must not import Cinder or cinderclient: it may have
    just patched Cinder, and the check must see the API as users do.
    """

    def __init__(self, url: str, user: str = 'admin',
                 project: str = 'admin') -> None:
        self.url = url
        self.token = '%s:%s' % (user, project)

    def call(self, method: str, path: str, body: Body = None,
             microversion: str = '3.0',
             timeout: float = 120) -> tuple[int, Body]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={'X-Auth-Token': self.token,
                     'Content-Type': 'application/json',
                     'Accept': 'application/json',
                     'OpenStack-API-Version': 'volume %s' % microversion})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                return err.code, json.loads(raw)
            except ValueError:
                return err.code, raw.decode(errors='replace')

    def services_up(self) -> bool:
        """Whether the scheduler and a volume backend report up.

        backend_state (3.49) comes from the capabilities a volume service
        publishes at the end of init_host, so unlike its heartbeat it
        cannot be left over from an earlier run with the same database.
        """
        try:
            status, body = self.call('GET', '/os-services',
                                     microversion='3.49', timeout=10)
        except OSError:
            return False
        if status != 200:
            return False
        up = {(s['binary'], s.get('backend_state', 'up'))
              for s in body['services'] if s['state'] == 'up'}
        return (('cinder-volume', 'up') in up and
                any(b == 'cinder-scheduler' for b, _s in up))

    def volume_status(self, vol_id: str, kind: str = 'volume') -> str | None:
        """Status of a volume (or ``kind='snapshot'``); None once gone."""
        status, body = self.call('GET', '/%ss/%s' % (kind, vol_id))
        if status == 404:
            return None
        if status != 200:
            raise errors.LaunchError('GET %s %s: HTTP %s %s'
                                     % (kind, vol_id, status, body))
        return body[kind]['status']

    def wait_status(self, vol_id: str, wanted: str, timeout: float = 120,
                    kind: str = 'volume') -> None:
        seen: list[str | None] = []

        def reached() -> bool:
            seen[:] = [self.volume_status(vol_id, kind)]
            if seen[0] != wanted and seen[0] and seen[0].startswith(
                    'error'):
                raise errors.LaunchError('%s %s went %s'
                                         % (kind, vol_id, seen[0]))
            return seen[0] == wanted

        if not sandbox.wait_for(reached, timeout, interval=0.2):
            raise errors.LaunchError('%s %s is still %s after %d s, not %s'
                                     % (kind, vol_id, seen[0] if seen else '?',
                                        timeout, wanted))

    def action(self, vol_id: str, body: Body) -> tuple[int, Body]:
        return self.call('POST', '/volumes/%s/action' % vol_id, body)


def _expect(what: str, status: int, body: Body,
            codes: Container[int] = (200, 202)) -> Body:
    if status not in codes:
        raise errors.LaunchError('%s: HTTP %s %s' % (what, status, body))
    return body


def qemu_io_url(data: dict[str, Any]) -> str:
    """libiscsi URL of an exported LUN, with its CHAP login."""
    return 'iscsi://%s%%%s@%s/%s/%s' % (
        data['auth_username'], data['auth_password'], data['target_portal'],
        data['target_iqn'], data['target_lun'])


def self_check(api: Api, volumes_home: str, out: Out) -> None:
    """Create, export, write and read over iSCSI, unexport, delete.

    The data written through the target must appear in the volume's file
    on the FUSE mount: that proves the whole path, API to tgtd to FUSE.
    """
    name = 'self-check-%s' % uuid.uuid4().hex[:8]
    pattern = 0x5a
    body = _expect('create', *api.call(
        'POST', '/volumes', {'volume': {'size': 1, 'name': name}}))
    vol_id = body['volume']['id']
    exported = False
    try:
        api.wait_status(vol_id, 'available')
        out('self-check: created 1 GiB volume %s' % vol_id)
        body = _expect('os-export', *api.action(vol_id, {'os-export': {}}))
        exported = True
        data = body['connection_info']['data']
        out('self-check: exported as %s on %s (CHAP user %s)'
            % (data['target_iqn'], data['target_portal'],
               data['auth_username']))
        res = subprocess.run(
            ['qemu-io', '-f', 'raw', '-c', 'write -P %d 1M 1M' % pattern,
             '-c', 'read -P %d 1M 1M' % pattern, qemu_io_url(data)],
            capture_output=True, text=True, timeout=300)
        if res.returncode != 0 or 'verification failed' in res.stdout:
            raise errors.LaunchError('iSCSI write/read failed: %s%s'
                                     % (res.stdout, res.stderr))
        with open(os.path.join(volumes_home, 'volume-%s' % vol_id),
                  'rb') as f:
            f.seek(MiB)
            if f.read(MiB) != bytes([pattern]) * MiB:
                raise errors.LaunchError(
                    'the data written over iSCSI is not in the volume file '
                    'on the FUSE mount')
        out('self-check: wrote and read back 1 MiB over iSCSI; the data '
            'is in the file on the FUSE mount')
        _expect('os-delete-export',
                *api.action(vol_id, {'os-delete-export': {}}))
        exported = False
        api.wait_status(vol_id, 'available')
        out('self-check: export removed')
        snapshot_and_clone(api, volumes_home, vol_id, name, pattern, out)
    finally:
        if exported:
            api.action(vol_id, {'os-delete-export': {}})
            sandbox.wait_for(
                lambda: api.volume_status(vol_id) != 'deleting_export',
                60, interval=0.5)
        api.call('DELETE', '/volumes/%s' % vol_id)
    if not sandbox.wait_for(lambda: api.volume_status(vol_id) is None,
                            120, interval=0.5):
        raise errors.LaunchError('volume %s was not deleted' % vol_id)
    out('self-check: volume deleted')


def snapshot_and_clone(api: Api, volumes_home: str, vol_id: str, name: str,
                       pattern: int, out: Out) -> None:
    """Snapshot the volume and clone it; say how long each took.

    Both are copies of the volume's file by the driver; the data written
    over iSCSI must be in each. Both are deleted again.
    """
    made: list[tuple[str, str]] = []
    try:
        start = time.monotonic()
        body = _expect('snapshot', *api.call(
            'POST', '/snapshots', {'snapshot': {'volume_id': vol_id,
                                                'name': name}}))
        snap_id = body['snapshot']['id']
        made.append(('snapshot', snap_id))
        api.wait_status(snap_id, 'available', kind='snapshot', timeout=600)
        out('self-check: snapshot %s took %.1f s'
            % (snap_id, time.monotonic() - start))
        start = time.monotonic()
        body = _expect('clone', *api.call(
            'POST', '/volumes', {'volume': {'size': 1, 'name': name + '-clone',
                                            'source_volid': vol_id}}))
        clone_id = body['volume']['id']
        made.append(('volume', clone_id))
        api.wait_status(clone_id, 'available', timeout=600)
        out('self-check: clone %s took %.1f s'
            % (clone_id, time.monotonic() - start))
        for kind, obj_id in made:
            with open(os.path.join(volumes_home, '%s-%s' % (kind, obj_id)),
                      'rb') as f:
                f.seek(MiB)
                if f.read(MiB) != bytes([pattern]) * MiB:
                    raise errors.LaunchError(
                        'the %s of the volume lacks the data written over '
                        'iSCSI' % kind)
        out('self-check: the snapshot and the clone hold the data')
    finally:
        for kind, obj_id in reversed(made):
            api.call('DELETE', '/%ss/%s' % (kind, obj_id))
            if not sandbox.wait_for(
                    lambda: api.volume_status(obj_id, kind) is None, 120,
                    interval=0.5):
                raise errors.LaunchError('%s %s was not deleted'
                                         % (kind, obj_id))


def client_extension_dir() -> str | None:
    """Directory the cinder CLI needs on PYTHONPATH, or None.

    python-cinderclient finds ``*cinderclient_ext`` modules with pkgutil,
    which sees plain directories on sys.path only, not the import hook of
    an editable (PEP 660) install such as tox's: there ``cinder export``
    is missing unless the checkout is on PYTHONPATH.
    """
    spec = importlib.util.find_spec('fuse_cinderclient_ext')
    if spec is None or not spec.origin:
        return None
    where = os.path.dirname(os.path.abspath(spec.origin))
    plain = set(site.getsitepackages()) | {site.getusersitepackages()}
    return None if where in {os.path.abspath(p) for p in plain} else where


def cli_environment(url: str, ext_dir: str | None = None) -> str:
    """Shell line that points the cinder CLI at the deployment."""
    words = ['export',
             'PATH=%s:$PATH' % shlex.quote(
                 os.path.dirname(os.path.abspath(sys.executable)))]
    if ext_dir:
        words.append('PYTHONPATH=%s${PYTHONPATH:+:$PYTHONPATH}'
                     % shlex.quote(ext_dir))
    words += ['OS_AUTH_TYPE=noauth', 'CINDER_ENDPOINT=%s' % url,
              'OS_USER_ID=admin', 'OS_PROJECT_ID=admin',
              'OS_VOLUME_API_VERSION=3.71']
    return ' '.join(words)
