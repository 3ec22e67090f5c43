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
"""``cinder export`` and ``cinder delete-export`` for python-cinderclient.

python-cinderclient loads every top-level module whose name ends in
``cinderclient_ext`` and turns its ``do_*`` functions into commands, so
installing this module is all it takes: the client itself is not patched.
The commands drive the ``os-export`` / ``os-delete-export`` volume actions
added to Cinder by ``fuse-cinder-patch apply``.  They need no microversion
(python-cinderclient stops at 3.71, so a newer one would be unreachable).

Python 3.12 and later: python-cinderclient (up to 9.10 at least) looks the
module up with ``FileFinder.find_module``, which 3.12 removed, so *any*
``*cinderclient_ext`` module makes the plain ``cinder`` command fail with
``AttributeError: 'FileFinder' object has no attribute 'find_module'``.
There, run ``fuse-cinder`` instead: it is the same client (all ``cinder``
commands plus these two) with the missing lookup method put back for its
own process only.  On 3.11 both ``cinder`` and ``fuse-cinder`` work.
"""

import argparse
import importlib.machinery
import importlib.util
import json
import sys
import types
from typing import Any, Callable, Optional, TypeVar

from cinderclient.apiclient import base as common_base
from cinderclient import base
from cinderclient import exceptions
from cinderclient import shell_utils
from cinderclient import utils

# The fields an initiator needs first, in the order a person reads them.
_MAIN_FIELDS = ('volume_id', 'driver_volume_type', 'target_portal',
                'target_iqn', 'target_lun', 'auth_method', 'auth_username',
                'auth_password', 'access_mode')
_Result = TypeVar('_Result')


class VolumeExportManager(base.Manager):
    """Python API of the os-export / os-delete-export volume actions.

    A client built with this module among its extensions has it as
    ``cs.fuse_cinderclient_ext``; otherwise ``VolumeExportManager(cs)``::

        info = VolumeExportManager(cs).export(volume)
        # {'driver_volume_type': 'iscsi', 'data': {'target_portal': ...,
        #  'target_iqn': ..., 'auth_username': ..., 'access_mode': ...}}
        VolumeExportManager(cs).delete_export(volume)

    Both take a volume or its ID and raise cinderclient's exceptions
    (BadRequest for a volume in the wrong status or on a backend that
    cannot export, NotFound, Forbidden, ...).
    """

    resource_class = None

    def _post_action(self, volume: Any, action: str) -> tuple[Any, Any]:
        url = '/volumes/%s/action' % base.getid(volume)
        return self.api.client.post(url, body={action: {}})

    def export(self, volume: Any) -> common_base.DictWithMeta:
        """Export the volume; returns its connection information."""
        resp, body = self._post_action(volume, 'os-export')
        info = (body or {}).get('connection_info') or {}
        return common_base.DictWithMeta(info, resp)

    def delete_export(self, volume: Any) -> common_base.TupleWithMeta:
        """Remove the export; the volume becomes available again."""
        resp, body = self._post_action(volume, 'os-delete-export')
        return common_base.TupleWithMeta((resp, body), resp)


def _flatten(volume: Any,
             connection_info: Optional[dict[str, Any]]) -> dict[str, Any]:
    """One flat mapping per volume: driver data plus the protocol."""
    info = connection_info or {}
    row = dict(info.get('data') or {})
    row['driver_volume_type'] = info.get('driver_volume_type')
    row.setdefault('volume_id', volume.id)
    return row


def _json_value(field: str) -> Callable[[dict[str, Any]], Any]:
    def format_value(row: dict[str, Any]) -> Any:
        value = row.get(field)
        if isinstance(value, (dict, list, bool)) or value is None:
            return json.dumps(value, sort_keys=True)
        return value
    return format_value


def _print_rows(rows: list[dict[str, Any]]) -> None:
    """cinderclient's table: main fields first, the driver's extras after."""
    keys: set[str] = set()
    for row in rows:
        keys.update(row)
    fields = [k for k in _MAIN_FIELDS if k in keys]
    fields += sorted(k for k in keys if k not in _MAIN_FIELDS)
    shell_utils.print_list(rows, fields,
                           formatters={f: _json_value(f) for f in fields},
                           sortby_index=None)


def _for_each_volume(cs: Any, names: list[str],
                     action: Callable[[Any], _Result], verb: str
                     ) -> tuple[list[tuple[Any, _Result]], int]:
    """Run action(volume) on every volume, reporting each failure.

    Returns the results of those that succeeded, and the number of
    failures; the caller prints the results first and then fails
    (non-zero exit) if any volume failed.
    """
    results: list[tuple[Any, _Result]] = []
    failed = 0
    for name in names:
        try:
            volume = utils.find_volume(cs, name)
            results.append((volume, action(volume)))
        except Exception as e:
            failed += 1
            print('%s of volume %s failed: %s' % (verb, name, e),
                  file=sys.stderr)
    return results, failed


def _fail_if_any(results: list[tuple[Any, Any]], failed: int,
                 verb: str) -> None:
    if not failed:
        return
    if not results:
        raise exceptions.CommandError(
            'Unable to %s any of the specified volumes.' % verb.lower())
    raise exceptions.CommandError(
        'Unable to %s %d of the %d specified volumes.'
        % (verb.lower(), failed, failed + len(results)))


@utils.arg('volume', metavar='<volume>', nargs='+',
           help='Name or ID of the volume(s) to export.')
@utils.arg('--json', action='store_true', default=False,
           help='Print the connection information as a JSON list.')
def do_export(cs: Any, args: argparse.Namespace) -> None:
    """Export available volumes to a host outside Nova (iSCSI target).

    Prints what the host needs to log in: portal, IQN, LUN and the CHAP
    credentials.  The volume stays in the 'exported' status until
    delete-export.  Exits non-zero if any volume failed, after printing
    those that did not.
    """
    manager = VolumeExportManager(cs)
    results, failed = _for_each_volume(
        cs, args.volume,
        lambda volume: _flatten(volume, manager.export(volume)), 'Export')
    rows = [row for _volume, row in results]
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
    elif rows:
        _print_rows(rows)
    _fail_if_any(results, failed, 'Export')


@utils.arg('volume', metavar='<volume>', nargs='+',
           help='Name or ID of the exported volume(s).')
def do_delete_export(cs: Any, args: argparse.Namespace) -> None:
    """Remove the export of volumes and make them available again."""
    manager = VolumeExportManager(cs)
    results, failed = _for_each_volume(cs, args.volume,
                                       manager.delete_export,
                                       'Delete-export')
    for volume, _none in results:
        print('Export of volume %s removed.' % volume.id)
    _fail_if_any(results, failed, 'Delete-export')


class _SpecLoader(object):
    """Loader with the legacy load_module() that cinderclient calls."""

    def __init__(self, spec: importlib.machinery.ModuleSpec) -> None:
        self.spec = spec

    def load_module(self, name: str) -> types.ModuleType:
        if name in sys.modules:
            return sys.modules[name]
        loader = self.spec.loader
        assert loader is not None       # _find_module made us for one
        module = importlib.util.module_from_spec(self.spec)
        sys.modules[name] = module
        try:
            loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module


def _find_module(self: importlib.machinery.FileFinder,
                 fullname: str) -> Optional[_SpecLoader]:
    spec = self.find_spec(fullname)
    if spec is None or spec.loader is None:
        return None
    return _SpecLoader(spec)


def install_find_module_shim() -> bool:
    """Give FileFinder back the find_module() Python 3.12 removed.

    Only for the process of the ``fuse-cinder`` command; returns whether
    anything was installed (False on Python 3.11 and older).
    """
    finder = importlib.machinery.FileFinder
    if hasattr(finder, 'find_module'):
        return False
    # setattr: mypy checks against 3.11's FileFinder, which has one.
    setattr(finder, 'find_module', _find_module)
    return True


def main() -> None:
    """Console script ``fuse-cinder``: the cinder client, on any Python."""
    install_find_module_shim()
    from cinderclient import shell
    shell.main()        # exits by itself on an error


if __name__ == '__main__':
    main()
