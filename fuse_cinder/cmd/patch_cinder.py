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
"""fuse-cinder-patch: check, apply or revert the export patches on Cinder.

Every command first checks that the Cinder found is the release the
patches were made for, and refuses anything else: a patch that happens to
apply to another release can still break it.  ``apply`` and ``revert`` are
all-or-nothing and idempotent: patches already in the wanted state are
skipped, nothing is touched when any patch would not apply cleanly (no
fuzz allowed), and a failure half way is rolled back.

Exit codes: 0 success (``check``: consistently applied or not applied),
1 inconsistent or conflicting state or a failed change, 2 no usable
Cinder, wrong Cinder version or no patch program.
"""

import argparse
import configparser
import glob
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Callable, Optional

from fuse_cinder import patches

APPLIED = 'applied'
NOT_APPLIED = 'not applied'
CONFLICT = 'conflict'

EXIT_OK = 0
EXIT_STATE = 1
EXIT_ENV = 2

DEFAULT_CINDER_CONF = '/etc/cinder/cinder.conf'
# Statuses of patches 0001: an unpatched Cinder knows none of them, and
# its detach or delete path would then leave the targets behind.
EXPORT_STATUSES = ('exporting', 'exported', 'delete_exporting',
                   'error_exporting')

APPLY_ORDER = ('Restart every cinder-volume service first, then cinder-api '
               'and cinder-scheduler.')
REVERT_ORDER = ('Restart cinder-api and cinder-scheduler first, so that no '
                'new os-export reaches a volume service, then every '
                'cinder-volume service.')


#: Where the commands write their report, one line per call (print).
Output = Callable[[str], None]


class PatchError(Exception):
    """An environment problem that makes every command impossible."""


def default_site_packages() -> str:
    """Directory holding the importable ``cinder`` package.

    Found without importing it: importing Cinder monkey-patches the
    interpreter and registers options.
    """
    spec = importlib.util.find_spec('cinder')
    if spec is None or not spec.submodule_search_locations:
        raise PatchError('Cinder is not installed for %s; use '
                         '--site-packages.' % sys.executable)
    return os.path.dirname(list(spec.submodule_search_locations)[0])


def cinder_version(site: str) -> str:
    """Version of the Cinder distribution installed in ``site``."""
    if not os.path.isdir(os.path.join(site, 'cinder')):
        raise PatchError('No cinder package in %s.' % site)
    for dist in importlib.metadata.distributions(path=[site]):
        if (dist.metadata['Name'] or '').lower() == 'cinder':
            return dist.version
    raise PatchError('Cannot tell which Cinder release is in %s: it has no '
                     'cinder-*.dist-info (or .egg-info) metadata.' % site)


class Tool(object):
    """Runs one patch program over the site-packages directory."""

    def __init__(self, kind: str, site: str) -> None:
        self.kind = kind
        self.site = site

    @classmethod
    def find(cls, wanted: str, site: str) -> 'Tool':
        kinds = ['patch', 'git'] if wanted == 'auto' else [wanted]
        for kind in kinds:
            if shutil.which(kind):
                return cls(kind, site)
        raise PatchError('Neither of %s is installed; install GNU patch.' %
                         ' / '.join(kinds))

    def _command(self, patch_file: str, reverse: bool,
                 dry_run: bool) -> list[str]:
        if self.kind == 'patch':
            # --force: never ask and never guess that a patch is reversed
            # (--batch would silently apply it backwards); --fuzz=0: only
            # exact context, as the sources must be the pristine release.
            cmd = ['patch', '-p1', '--force', '--fuzz=0', '--silent',
                   '--no-backup-if-mismatch', '--reject-file=-',
                   '-d', self.site, '-i', patch_file]
            if reverse:
                cmd.append('--reverse')
            if dry_run:
                cmd.append('--dry-run')
            return cmd
        cmd = ['git', 'apply', '-p1']
        if reverse:
            cmd.append('--reverse')
        if dry_run:
            cmd.append('--check')
        return cmd + [patch_file]

    def run(self, patch_file: str, reverse: bool = False,
            dry_run: bool = False) -> tuple[bool, str]:
        """Returns (succeeded, program output)."""
        env = dict(os.environ)
        # git apply inside a work tree would resolve paths from its top.
        env['GIT_CEILING_DIRECTORIES'] = os.path.dirname(self.site)
        proc = subprocess.run(self._command(patch_file, reverse, dry_run),
                              cwd=self.site, env=env,
                              stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT,
                              universal_newlines=True)
        return proc.returncode == 0, proc.stdout.strip()


def _scratch_copy(site: str, files: list[str], dest: str) -> None:
    """Copy what the patches touch, so dry runs can build on each other.

    Later patches of the series may have earlier ones in their context,
    so each one can only be tried on top of those before it: that needs
    real application, done here on a throw-away copy.
    """
    for f in files:
        for rel in patches.touched_files(f):
            src = os.path.join(site, rel)
            dst = os.path.join(dest, rel)
            if os.path.exists(src) and not os.path.exists(dst):
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copy2(src, dst)


def _replay(tool: Tool, files: list[str], applied: int
            ) -> tuple[bool, Optional[str], Optional[str]]:
    """Whether the sources are pristine plus the first ``applied`` patches.

    Undoes those on a scratch copy, then the whole series must apply.
    Returns (ok, name of the first patch that failed, its output).
    """
    with tempfile.TemporaryDirectory(prefix='fuse-cinder-patch-') as tmp:
        _scratch_copy(tool.site, files, tmp)
        scratch = Tool(tool.kind, tmp)
        for f in reversed(files[:applied]):
            ok, output = scratch.run(f, reverse=True)
            if not ok:
                return False, _name(f), output
        for f in files:
            ok, output = scratch.run(f)
            if not ok:
                return False, _name(f), output
    return True, None, None


def series_state(tool: Tool, files: list[str]
                 ) -> tuple[Optional[int], Optional[str]]:
    """How many leading patches of the series are applied.

    Returns (count, None), or (None, diagnostics) when the sources are
    neither pristine nor pristine plus a prefix of the series.
    """
    n = len(files)
    first = None
    for count in [0, n] + list(range(n - 1, 0, -1)):
        ok, name, output = _replay(tool, files, count)
        if ok:
            return count, None
        if first is None:
            first = '%s does not apply to the sources:\n%s' % (name, output)
    return None, first


def drop_bytecode(site: str, patch_file: str) -> None:
    """Remove cached bytecode of patched modules so nothing stale runs."""
    for rel in patches.touched_files(patch_file):
        base, name = os.path.split(os.path.join(site, rel))
        stem = os.path.splitext(name)[0]
        for pyc in glob.glob(os.path.join(base, '__pycache__',
                                          stem + '.*.pyc')):
            try:
                os.unlink(pyc)
            except OSError:
                pass


def _name(patch_file: str) -> str:
    return os.path.basename(patch_file)


def cmd_check(tool: Tool, files: list[str], out: Output) -> int:
    count, why = series_state(tool, files)
    if count is None:
        for f in files:
            out('%-40s %s' % (_name(f), CONFLICT))
        out('patches: %s' % CONFLICT)
        out('The sources are neither the pristine Cinder nor the patched '
            'one: something else modified them. %s' % why)
        return EXIT_STATE
    for i, f in enumerate(files):
        out('%-40s %s' % (_name(f), APPLIED if i < count else NOT_APPLIED))
    if count == len(files):
        out('patches: %s' % APPLIED)
        return EXIT_OK
    if count == 0:
        out('patches: %s' % NOT_APPLIED)
        return EXIT_OK
    out('patches: partially applied (%d of %d); run "apply" or "revert" '
        'to reach a consistent state.' % (count, len(files)))
    return EXIT_STATE


def _change(tool: Tool, files: list[str], out: Output, reverse: bool,
            dry_run: bool) -> int:
    verb, done = ('revert', 'reverted') if reverse else ('apply', 'applied')
    count, why = series_state(tool, files)
    if count is None:
        out('Cannot %s: %s' % (verb, why))
        out('Nothing was changed.')
        return EXIT_STATE
    if reverse:
        todo = list(reversed(files[:count]))
        skipped = files[count:]
    else:
        todo = files[count:]
        skipped = files[:count]
    for f in skipped:
        out('%-40s already %s' % (_name(f), done))
    changed: list[str] = []
    for f in todo:
        if dry_run:
            out('%-40s would be %s' % (_name(f), done))
            continue
        ok, output = tool.run(f, reverse=reverse)
        if not ok:
            out('%s: %s failed:\n%s' % (_name(f), verb, output))
            for g in reversed(changed):
                tool.run(g, reverse=not reverse)
                drop_bytecode(tool.site, g)
            out('Rolled back; the sources are as they were.')
            return EXIT_STATE
        drop_bytecode(tool.site, f)
        changed.append(f)
        out('%-40s %s' % (_name(f), done))
    if changed or (dry_run and todo):
        out(REVERT_ORDER if reverse else APPLY_ORDER)
    return EXIT_OK


def cmd_apply(tool: Tool, files: list[str], out: Output,
              dry_run: bool = False) -> int:
    return _change(tool, files, out, reverse=False, dry_run=dry_run)


def database_url(config_file: str) -> Optional[str]:
    """[database] connection of a cinder.conf, or None."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    if not parser.read(config_file):
        return None
    return parser.get('database', 'connection', fallback=None) or None


def exported_volumes(url: str) -> list[tuple[str, str]]:
    """(id, status) of every volume in an export status."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sqlalchemy.text(
                'SELECT id, status FROM volumes WHERE deleted = :no AND '
                'status IN :statuses ORDER BY id').bindparams(
                    sqlalchemy.bindparam('statuses', expanding=True))
            rows = conn.execute(query, {'no': False,
                                        'statuses': list(EXPORT_STATUSES)})
            return [tuple(row) for row in rows]
    finally:
        engine.dispose()


def _check_no_exports(config_file: Optional[str], out: Output,
                      force: bool) -> bool:
    """Whether revert may go on; says what to do when it may not."""
    advice = ('Remove every export first: "cinder delete-export VOLUME" '
              '(any of these statuses), then revert.')
    url = database_url(config_file) if config_file else None
    if not url:
        out('Could not check for volumes in the export statuses (%s): no '
            '[database] connection in %s. Make sure no volume is in one '
            '(cinder list --all-tenants --filters status=exported, and so '
            'on): reverted, Cinder can neither show nor remove their '
            'targets. %s' % (', '.join(EXPORT_STATUSES),
                             config_file or DEFAULT_CINDER_CONF, advice))
        return True
    try:
        volumes = exported_volumes(url)
    except Exception as e:
        out('Could not check the Cinder database for volumes in the export '
            'statuses (%s): %s' % (', '.join(EXPORT_STATUSES), e))
        if force:
            return True
        out('%s Or pass --force to revert without the check.' % advice)
        return False
    if not volumes:
        return True
    out('%d volume(s) are in an export status:' % len(volumes))
    for vol_id, status in volumes:
        out('  %s %s' % (vol_id, status))
    if force:
        out('--force: reverting anyway; their targets stay until removed '
            'by hand.')
        return True
    out('Refusing to revert: the unpatched Cinder knows none of these '
        'statuses and could not remove their targets. %s' % advice)
    return False


def cmd_revert(tool: Tool, files: list[str], out: Output,
               dry_run: bool = False, config_file: Optional[str] = None,
               force: bool = False) -> int:
    if not _check_no_exports(config_file, out, force):
        out('Nothing was changed.')
        return EXIT_STATE
    return _change(tool, files, out, reverse=True, dry_run=dry_run)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='fuse-cinder-patch',
        description='Check, apply or revert the fuse_cinder patches that '
                    'add the os-export / os-delete-export volume actions '
                    'to Cinder %s.' % patches.CINDER_VERSION)
    parser.add_argument('command', choices=['check', 'apply', 'revert'])
    parser.add_argument('--site-packages', metavar='DIR',
                        help='Directory holding the cinder package '
                             '(default: where this Python imports it '
                             'from).')
    parser.add_argument('--tool', choices=['auto', 'patch', 'git'],
                        default='auto',
                        help='Program that applies the patches (default: '
                             'GNU patch, else git apply).')
    parser.add_argument('--dry-run', action='store_true',
                        help='apply/revert: only say what would change.')
    parser.add_argument('--config-file', metavar='FILE',
                        help='revert: cinder.conf whose [database] '
                             'connection is checked for volumes still in '
                             'an export status (default: %s when it '
                             'exists).' % DEFAULT_CINDER_CONF)
    parser.add_argument('--force', action='store_true',
                        help='revert even while volumes are in an export '
                             'status.')
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None, out: Output = print) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        site = os.path.abspath(args.site_packages or
                               default_site_packages())
        version = cinder_version(site)
        if version != patches.CINDER_VERSION:
            out('Refusing: these patches are made for Cinder %(want)s, but '
                'the Cinder in %(site)s is %(have)s. Use the fuse_cinder '
                'release made for Cinder %(have)s.' %
                {'want': patches.CINDER_VERSION, 'site': site,
                 'have': version})
            return EXIT_ENV
        tool = Tool.find(args.tool, site)
    except PatchError as e:
        out('Error: %s' % e)
        return EXIT_ENV
    out('Cinder %s in %s' % (version, site))
    files = patches.series()
    if args.command == 'check':
        return cmd_check(tool, files, out)
    if args.command == 'apply':
        return cmd_apply(tool, files, out, dry_run=args.dry_run)
    config_file = args.config_file
    if config_file is None and os.path.exists(DEFAULT_CINDER_CONF):
        config_file = DEFAULT_CINDER_CONF
    return cmd_revert(tool, files, out, dry_run=args.dry_run,
                      config_file=config_file, force=args.force)


if __name__ == '__main__':
    sys.exit(main())
