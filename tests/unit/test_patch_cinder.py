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
"""fuse-cinder-patch against a small fake site-packages and fake patches.

The real patches against the real Cinder are exercised by
tests/functional/test_patches_apply.py.
"""

import os
import re
import shutil
import subprocess

import pytest

from fuse_cinder.cmd import patch_cinder
from fuse_cinder import patches

VERSION = patches.CINDER_VERSION

ORIG_A = 'one\ntwo\nthree\nfour\nfive\n'
NEW_A = 'one\ntwo\nthree and a half\nfour\nfive\n'
ORIG_B = 'alpha\nbeta\ngamma\n'
NEW_B = 'alpha\nbeta\ngamma\ndelta\n'


def _diff(rel, old, new, tmp_path):
    a = tmp_path / 'diff-a'
    b = tmp_path / 'diff-b'
    for root, text in ((a, old), (b, new)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    res = subprocess.run(['diff', '-u', '--label', 'a/' + rel,
                          '--label', 'b/' + rel, str(a / rel), str(b / rel)],
                         capture_output=True, text=True)
    assert res.returncode == 1
    return 'A header line that patch programs skip.\n\n' + res.stdout


@pytest.fixture
def site(tmp_path):
    """site-packages with a two-file 'cinder' and its dist-info."""
    root = tmp_path / 'site'
    pkg = root / 'cinder' / 'sub'
    pkg.mkdir(parents=True)
    (root / 'cinder' / '__init__.py').write_text('')
    (root / 'cinder' / 'a.py').write_text(ORIG_A)
    (pkg / 'b.py').write_text(ORIG_B)
    (pkg / '__pycache__').mkdir()
    (pkg / '__pycache__' / 'b.cpython-311.pyc').write_bytes(b'stale')
    dist = root / ('cinder-%s.dist-info' % VERSION)
    dist.mkdir()
    (dist / 'METADATA').write_text(
        'Metadata-Version: 2.1\nName: cinder\nVersion: %s\n' % VERSION)
    return root


@pytest.fixture
def series(tmp_path, monkeypatch):
    """Two fake patches installed as the package's series."""
    pdir = tmp_path / 'patches'
    pdir.mkdir()
    p1 = pdir / '0001-a.patch'
    p1.write_text(_diff('cinder/a.py', ORIG_A, NEW_A, tmp_path))
    p2 = pdir / '0002-b.patch'
    p2.write_text(_diff('cinder/sub/b.py', ORIG_B, NEW_B, tmp_path))
    files = [str(p1), str(p2)]
    monkeypatch.setattr(patches, 'series', lambda: list(files))
    return files


def run(site, *args):
    lines = []
    code = patch_cinder.main(['--site-packages', str(site)] + list(args),
                             out=lines.append)
    return code, '\n'.join(lines)


TOOLS = [pytest.param('patch', marks=pytest.mark.skipif(
             shutil.which('patch') is None, reason='no GNU patch')),
         pytest.param('git', marks=pytest.mark.skipif(
             shutil.which('git') is None, reason='no git'))]


@pytest.mark.parametrize('tool', TOOLS)
def test_apply_check_revert_cycle(site, series, tool):
    code, out = run(site, '--tool', tool, 'check')
    assert code == 0
    assert 'patches: not applied' in out

    code, out = run(site, '--tool', tool, 'apply')
    assert code == 0, out
    assert (site / 'cinder' / 'a.py').read_text() == NEW_A
    assert (site / 'cinder' / 'sub' / 'b.py').read_text() == NEW_B
    assert 'Restart every cinder-volume' in out
    # Stale bytecode of a patched module is gone.
    assert not (site / 'cinder' / 'sub' / '__pycache__' /
                'b.cpython-311.pyc').exists()

    code, out = run(site, '--tool', tool, 'check')
    assert code == 0
    assert 'patches: applied' in out

    code, out = run(site, '--tool', tool, 'revert')
    assert code == 0, out
    assert (site / 'cinder' / 'a.py').read_text() == ORIG_A
    assert (site / 'cinder' / 'sub' / 'b.py').read_text() == ORIG_B
    leftovers = [n for _d, _s, names in os.walk(site) for n in names
                 if n.endswith(('.orig', '.rej'))]
    assert leftovers == []


def test_apply_and_revert_are_idempotent(site, series):
    assert run(site, 'apply')[0] == 0
    code, out = run(site, 'apply')
    assert code == 0
    assert out.count('already applied') == 2
    assert (site / 'cinder' / 'a.py').read_text() == NEW_A

    assert run(site, 'revert')[0] == 0
    code, out = run(site, 'revert')
    assert code == 0
    assert out.count('already reverted') == 2
    assert (site / 'cinder' / 'a.py').read_text() == ORIG_A


def test_dependent_patches_are_checked_in_order(site, series, tmp_path,
                                                monkeypatch):
    # A third patch whose context is the line the first one adds: it can
    # only be checked on top of the first.
    p3 = tmp_path / 'patches' / '0003-a-again.patch'
    p3.write_text(_diff('cinder/a.py', NEW_A,
                        NEW_A.replace('four', 'four and more'), tmp_path))
    files = series + [str(p3)]
    monkeypatch.setattr(patches, 'series', lambda: list(files))
    code, out = run(site, 'check')
    assert code == 0, out
    assert 'patches: not applied' in out
    assert run(site, 'apply')[0] == 0
    assert 'four and more' in (site / 'cinder' / 'a.py').read_text()
    assert 'patches: applied' in run(site, 'check')[1]
    assert run(site, 'revert')[0] == 0
    assert (site / 'cinder' / 'a.py').read_text() == ORIG_A


def test_partial_state_is_reported_and_completed(site, series):
    (site / 'cinder' / 'a.py').write_text(NEW_A)   # only 0001 "applied"
    code, out = run(site, 'check')
    assert code == 1
    assert re.search(r'0001-a\.patch\s+applied', out)
    assert re.search(r'0002-b\.patch\s+not applied', out)
    assert 'partially applied' in out

    code, out = run(site, 'apply')
    assert code == 0
    assert (site / 'cinder' / 'sub' / 'b.py').read_text() == NEW_B


def test_conflict_changes_nothing(site, series):
    (site / 'cinder' / 'sub' / 'b.py').write_text('alpha\nBETA\ngamma\n')
    code, out = run(site, 'check')
    assert code == 1
    assert 'patches: conflict' in out

    code, out = run(site, 'apply')
    assert code == 1
    assert 'Cannot apply: 0002-b.patch does not apply' in out
    assert 'Nothing was changed.' in out
    # 0001 would have applied, but apply is all or nothing.
    assert (site / 'cinder' / 'a.py').read_text() == ORIG_A


def test_failure_half_way_is_rolled_back(site, series, monkeypatch):
    real_run = patch_cinder.Tool.run

    def flaky(self, patch_file, reverse=False, dry_run=False):
        # Only the real site fails; the scratch copies used for checking
        # the state behave.
        if (patch_file.endswith('0002-b.patch') and
                self.site == str(site) and not dry_run):
            return False, 'disk full'
        return real_run(self, patch_file, reverse=reverse, dry_run=dry_run)

    monkeypatch.setattr(patch_cinder.Tool, 'run', flaky)
    code, out = run(site, 'apply')
    assert code == 1
    assert 'disk full' in out
    assert 'Rolled back' in out
    assert (site / 'cinder' / 'a.py').read_text() == ORIG_A


def test_dry_run_changes_nothing(site, series):
    code, out = run(site, 'apply', '--dry-run')
    assert code == 0
    assert out.count('would be applied') == 2
    assert (site / 'cinder' / 'a.py').read_text() == ORIG_A


def test_wrong_cinder_version_is_refused(site, series):
    meta = site / ('cinder-%s.dist-info' % VERSION) / 'METADATA'
    meta.write_text('Metadata-Version: 2.1\nName: cinder\nVersion: 28.1.0\n')
    for command in ('check', 'apply', 'revert'):
        code, out = run(site, command)
        assert code == 2
        assert 'Refusing' in out
        assert 'made for Cinder %s' % VERSION in out
        assert 'is 28.1.0' in out
    assert (site / 'cinder' / 'a.py').read_text() == ORIG_A


def test_unknown_cinder_version_is_refused(site, series):
    shutil.rmtree(site / ('cinder-%s.dist-info' % VERSION))
    code, out = run(site, 'apply')
    assert code == 2
    assert 'Cannot tell which Cinder release' in out
    assert (site / 'cinder' / 'a.py').read_text() == ORIG_A


def test_no_cinder_package(tmp_path, series):
    code, out = run(tmp_path, 'check')
    assert code == 2
    assert 'No cinder package' in out


def test_missing_patch_program(site, series, monkeypatch):
    monkeypatch.setattr(patch_cinder.shutil, 'which', lambda name: None)
    code, out = run(site, 'check')
    assert code == 2
    assert 'install GNU patch' in out


def test_default_site_packages_is_where_cinder_imports_from():
    import cinder
    site = patch_cinder.default_site_packages()
    assert os.path.join(site, 'cinder') == os.path.dirname(cinder.__file__)


# -- the shipped patch set ---------------------------------------------

def test_series_lists_every_shipped_patch_in_order():
    files = patches.series()
    shipped = sorted(n for n in os.listdir(patches.PATCH_DIR)
                     if n.endswith('.patch'))
    assert [os.path.basename(f) for f in files] == shipped
    assert all(os.path.isfile(f) for f in files)


def test_shipped_patches_touch_only_cinder_sources():
    touched = set()
    for f in patches.series():
        names = patches.touched_files(f)
        assert names, f
        for name in names:
            assert name.startswith('cinder/') and name.endswith('.py')
        touched.update(names)
        with open(f) as p:
            text = p.read()
        assert 'Target: Cinder %s.' % VERSION in text
        # Unified diffs made with labels, no absolute paths or dates.
        assert '--- /' not in text and '+++ /' not in text
    assert {'cinder/api/contrib/volume_actions.py',
            'cinder/api/schemas/volume_actions.py',
            'cinder/policies/volume_actions.py',
            'cinder/objects/fields.py',
            'cinder/volume/api.py',
            'cinder/volume/rpcapi.py',
            'cinder/volume/manager.py'} <= touched


# -- revert: order and volumes still exported --------------------------

def _cinder_conf(tmp_path, volumes):
    """A cinder.conf whose SQLite database holds these (id, status)."""
    import sqlite3
    path = tmp_path / 'cinder.sqlite'
    db = sqlite3.connect(str(path))
    db.execute('CREATE TABLE volumes (id VARCHAR(36), status VARCHAR(255), '
               'deleted BOOLEAN)')
    db.executemany('INSERT INTO volumes VALUES (?, ?, ?)',
                   [(v, s, d) for v, s, d in volumes])
    db.commit()
    db.close()
    conf = tmp_path / 'cinder.conf'
    conf.write_text('[DEFAULT]\nhost = h\n[database]\n'
                    'connection = sqlite:///%s\n' % path)
    return str(conf)


def test_revert_says_to_restart_cinder_api_first(site, series, tmp_path):
    conf = _cinder_conf(tmp_path, [])
    assert run(site, 'apply')[0] == 0
    code, out = run(site, 'revert', '--config-file', conf)
    assert code == 0, out
    assert 'Restart cinder-api and cinder-scheduler first' in out
    assert 'Restart every cinder-volume service first' not in out


def test_revert_refuses_while_volumes_are_exported(site, series, tmp_path):
    conf = _cinder_conf(tmp_path, [('v1', 'exported', False),
                                   ('v2', 'error_exporting', False),
                                   ('v3', 'available', False),
                                   ('v4', 'exported', True)])   # deleted
    assert run(site, 'apply')[0] == 0
    code, out = run(site, 'revert', '--config-file', conf)
    assert code == 1
    assert 'v1 exported' in out and 'v2 error_exporting' in out
    assert 'v3' not in out and 'v4' not in out
    assert 'cinder delete-export' in out and 'Nothing was changed.' in out
    assert (site / 'cinder' / 'a.py').read_text() == NEW_A
    # --dry-run refuses too; --force goes on, saying what stays behind.
    assert run(site, 'revert', '--dry-run', '--config-file', conf)[0] == 1
    code, out = run(site, 'revert', '--force', '--config-file', conf)
    assert code == 0, out
    assert 'stay until removed by hand' in out
    assert (site / 'cinder' / 'a.py').read_text() == ORIG_A


def test_revert_without_a_database_says_what_to_check(site, series,
                                                      tmp_path):
    assert run(site, 'apply')[0] == 0
    missing = str(tmp_path / 'no-such-cinder.conf')
    code, out = run(site, 'revert', '--config-file', missing)
    assert code == 0, out
    assert 'Could not check for volumes in the export statuses' in out
    assert 'cinder delete-export' in out


def test_revert_with_an_unreachable_database_refuses(site, series,
                                                     tmp_path):
    conf = tmp_path / 'cinder.conf'
    conf.write_text('[database]\nconnection = sqlite:///%s\n'
                    % (tmp_path / 'no-such-dir' / 'x.sqlite'))
    assert run(site, 'apply')[0] == 0
    code, out = run(site, 'revert', '--config-file', str(conf))
    assert code == 1
    assert 'Could not check the Cinder database' in out
    assert '--force' in out
    assert run(site, 'revert', '--config-file', str(conf), '--force')[0] == 0
