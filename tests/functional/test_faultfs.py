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

"""The fault-injection filesystem does what fault tests will rely on.

Every fault is checked from the caller's side (the errno a writer sees, the
time a call takes, a call that stays blocked), on real mounts. Anything that
touches a mount runs through call(), so a broken filesystem fails the test
instead of hanging it.
"""

import errno
import os
import subprocess
import sys
import threading
import time

import pytest

from fuse_cinder.allinone import faultfs

MiB = 1024 * 1024
TIMEOUT = 30

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists('/dev/fuse'),
    reason='FUSE mounts need root and /dev/fuse')


def start_call(func, *args):
    """Start func(*args) in a thread whose result is read later."""
    box = {}

    def run():
        try:
            box['result'] = func(*args)
        except BaseException as exc:
            box['error'] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def call(func, *args, timeout=TIMEOUT):
    """Run func(*args) in a thread; fail the test if it does not return.

    A syscall blocked on FUSE cannot be interrupted; the thread is left
    behind and freed when the fixture kills the daemon.
    """
    thread, box = start_call(func, *args)
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail('%s did not return within %ss' % (func, timeout))
    if 'error' in box:
        raise box['error']
    return box['result']


def write_file(path, data):
    with open(path, 'wb') as f:
        f.write(data)


def read_file(path):
    with open(path, 'rb') as f:
        return f.read()


def errno_of(func, *args):
    """The errno func(*args) fails with (None if it succeeds)."""
    try:
        call(func, *args)
    except OSError as exc:
        return exc.errno
    return None


def mnt(fs, name):
    return os.path.join(fs.mountpoint, name)


def backing(fs, name):
    return os.path.join(fs.backing, name)


class TestPassthrough(object):

    def test_data_and_metadata_reach_the_backing_directory(self, fs):
        def scenario():
            data = os.urandom(3 * MiB + 17)
            write_file(mnt(fs, 'a'), data)
            assert read_file(backing(fs, 'a')) == data
            assert read_file(mnt(fs, 'a')) == data

            os.mkdir(mnt(fs, 'd'))
            os.rename(mnt(fs, 'a'), mnt(fs, 'd/b'))
            assert sorted(os.listdir(fs.mountpoint)) == ['d']
            assert os.listdir(backing(fs, 'd')) == ['b']

            os.symlink('d/b', mnt(fs, 'link'))
            assert os.readlink(mnt(fs, 'link')) == 'd/b'
            assert os.readlink(backing(fs, 'link')) == 'd/b'

            os.chmod(mnt(fs, 'd/b'), 0o600)
            assert os.stat(backing(fs, 'd/b')).st_mode & 0o777 == 0o600

            os.utime(mnt(fs, 'd/b'), ns=(1000000000, 2000000000))
            assert os.stat(backing(fs, 'd/b')).st_mtime_ns == 2000000000

            os.truncate(mnt(fs, 'd/b'), 5)
            assert os.stat(backing(fs, 'd/b')).st_size == 5

            fd = os.open(mnt(fs, 'd/b'), os.O_RDWR)
            try:
                os.pwrite(fd, b'xyz', 1)
                os.fsync(fd)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            assert read_file(backing(fs, 'd/b')) == data[:1] + b'xyz' + \
                data[4:5]

            os.unlink(mnt(fs, 'link'))
            os.unlink(mnt(fs, 'd/b'))
            os.rmdir(mnt(fs, 'd'))
            assert os.listdir(fs.backing) == []

        call(scenario)

    def test_statvfs_is_the_backing_filesystems(self, fs):
        ours = call(os.statvfs, fs.mountpoint)
        theirs = os.statvfs(fs.backing)
        assert (ours.f_frsize, ours.f_blocks, ours.f_files) == \
            (theirs.f_frsize, theirs.f_blocks, theirs.f_files)

    def test_sparse_file_keeps_holes_and_seek_data_finds_data(self, fs):
        size = 64 * MiB

        def scenario():
            fd = os.open(mnt(fs, 'sparse'), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.ftruncate(fd, size)
                os.pwrite(fd, b'x' * 4096, 32 * MiB)
                os.fsync(fd)
                st = os.fstat(fd)
                data = os.lseek(fd, 0, os.SEEK_DATA)
                hole = os.lseek(fd, 32 * MiB, os.SEEK_HOLE)
                with pytest.raises(OSError) as past_data:
                    os.lseek(fd, 40 * MiB, os.SEEK_DATA)
            finally:
                os.close(fd)
            return st, data, hole, past_data.value.errno

        st, data, hole, past_data = call(scenario)
        assert st.st_size == size
        assert st.st_blocks * 512 < MiB  # what du reports
        assert data == 32 * MiB
        assert 32 * MiB < hole < size  # not EOF, as without lseek support
        assert past_data == errno.ENXIO
        fd = os.open(backing(fs, 'sparse'), os.O_RDONLY)
        try:
            assert hole == os.lseek(fd, 32 * MiB, os.SEEK_HOLE)
        finally:
            os.close(fd)
        assert fs.stats()['calls']['lseek'] >= 3

    def test_copy_file_range_is_passed_through(self, fs):
        data = os.urandom(2 * MiB)
        write_file(backing(fs, 'src'), data)

        def scenario():
            src = os.open(mnt(fs, 'src'), os.O_RDONLY)
            dst = os.open(mnt(fs, 'dst'), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                done = 0
                while done < len(data):
                    copied = os.copy_file_range(src, dst, len(data) - done)
                    assert copied > 0
                    done += copied
            finally:
                os.close(src)
                os.close(dst)

        call(scenario)
        assert read_file(backing(fs, 'dst')) == data
        assert fs.stats()['calls']['copy_file_range'] >= 1

    def test_mount_allows_other_users(self, fs):
        with open('/proc/self/mountinfo') as mountinfo:
            options = [line.split(' - ')[1] for line in mountinfo
                       if line.split()[4] == fs.mountpoint]
        assert len(options) == 1
        assert 'allow_other' in options[0]

    def test_concurrent_calls_are_served_while_one_hangs(self, fs):
        write_file(backing(fs, 'slow'), b'slow')
        write_file(backing(fs, 'fast'), b'fast')
        fs.hang(op='read', path='/slow')
        thread, box = start_call(read_file, mnt(fs, 'slow'))
        assert fs.wait_hung(1)
        assert call(read_file, mnt(fs, 'fast')) == b'fast'
        fs.release()
        thread.join(TIMEOUT)
        assert box == {'result': b'slow'}


class TestErrors(object):

    @pytest.mark.parametrize('op', ['write', 'create', 'truncate',
                                    'fallocate'])
    def test_enospc(self, fs, op):
        write_file(backing(fs, 'vol'), b'data')
        fd = call(os.open, mnt(fs, 'vol'), os.O_WRONLY)
        try:
            fs.enospc()
            attempt = {
                'write': lambda: os.write(fd, b'more'),
                'create': lambda: os.open(mnt(fs, 'new'),
                                          os.O_WRONLY | os.O_CREAT),
                'truncate': lambda: os.truncate(mnt(fs, 'vol'), MiB),
                'fallocate': lambda: os.posix_fallocate(fd, 0, MiB),
            }[op]
            assert errno_of(attempt) == errno.ENOSPC
            fs.clear()
            assert errno_of(attempt) is None
        finally:
            os.close(fd)

    def test_enospc_after_bytes_cuts_a_copy_short(self, fs):
        limit = 3 * MiB + 12345
        chunk = os.urandom(MiB)
        fs.enospc(after_bytes=limit)

        def copy():
            written = 0
            fd = os.open(mnt(fs, 'vol'), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                for _ in range(10):
                    try:
                        written += os.write(fd, chunk)
                    except OSError as exc:
                        return written, exc.errno
            finally:
                os.close(fd)
            return written, None

        written, err = call(copy)
        assert err == errno.ENOSPC
        assert written == limit
        assert os.path.getsize(backing(fs, 'vol')) == limit
        # The filesystem stays full for everything that needs space.
        assert errno_of(os.open, mnt(fs, 'other'),
                        os.O_WRONLY | os.O_CREAT) == errno.ENOSPC
        assert errno_of(os.truncate, mnt(fs, 'vol'), 10 * MiB) == \
            errno.ENOSPC

    def test_eio_on_read(self, fs):
        data = os.urandom(MiB)
        write_file(backing(fs, 'vol'), data)
        fs.eio(op='read')
        assert errno_of(read_file, mnt(fs, 'vol')) == errno.EIO
        fs.clear()
        assert call(read_file, mnt(fs, 'vol')) == data

    def test_eio_on_write(self, fs):
        fs.eio(op='write')
        assert errno_of(write_file, mnt(fs, 'vol'), b'x' * 4096) == errno.EIO
        assert fs.stats()['failed']['write'] >= 1

    def test_eio_on_copy_file_range_source(self, fs):
        write_file(backing(fs, 'src'), b'x' * MiB)
        fs.eio(op='read', path='/src')

        def copy():
            src = os.open(mnt(fs, 'src'), os.O_RDONLY)
            dst = os.open(mnt(fs, 'dst'), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                return os.copy_file_range(src, dst, MiB)
            finally:
                os.close(src)
                os.close(dst)

        assert errno_of(copy) == errno.EIO

    def test_count_and_path_limit_a_fault(self, fs):
        # Writes, not reads: the kernel silently retries a failed readahead,
        # so one failed read call need not reach the reader.
        fs.inject('write', errno.EIO, count=1, path='/bad-*')

        def write_twice(name):
            fd = os.open(mnt(fs, name), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                return errno_of(os.write, fd, b'1'), errno_of(os.write, fd,
                                                              b'2')
            finally:
                os.close(fd)

        assert call(write_twice, 'good') == (None, None)
        assert call(write_twice, 'bad-1') == (errno.EIO, None)  # transient
        assert fs.stats()['failed'] == {'write': 1}

    def test_direct_io_mount_shows_every_read_fault(self, make_fs):
        fs = make_fs(direct_io=True)
        write_file(backing(fs, 'vol'), b'data')
        fs.inject('read', errno.EIO, count=1)
        assert errno_of(read_file, mnt(fs, 'vol')) == errno.EIO
        assert call(read_file, mnt(fs, 'vol')) == b'data'

    def test_unknown_operation_is_refused(self, fs):
        with pytest.raises(ValueError):
            fs.inject('wirte', errno.EIO)


class TestSlowAndStuck(object):

    def test_delay_slows_each_call(self, fs):
        write_file(backing(fs, 'vol'), b'data')

        def timed_read():
            start = time.monotonic()
            read_file(mnt(fs, 'vol'))
            return time.monotonic() - start

        normal = call(timed_read)
        fs.delay(1.0, op='read')
        delayed = call(timed_read)
        fs.delay(0)
        assert delayed >= 0.9
        assert delayed > normal + 0.5

    def test_hang_blocks_until_release(self, fs):
        write_file(backing(fs, 'vol'), b'data')
        fs.hang(op='read')
        thread, box = start_call(read_file, mnt(fs, 'vol'))
        assert fs.wait_hung(1)
        thread.join(0.5)
        assert thread.is_alive()
        fs.release()
        thread.join(TIMEOUT)
        assert box == {'result': b'data'}

    def test_caller_of_a_hung_call_cannot_even_be_killed(self, fs):
        # What a timeout around a command on the mount runs into: once a
        # synchronous request (here a stat) reached the daemon, the caller
        # ignores SIGKILL until the daemon answers or dies. A timeout must
        # not wait to reap such a child.
        write_file(backing(fs, 'vol'), b'data')
        fs.hang(op='getattr', path='/vol')
        stat = subprocess.Popen(['stat', mnt(fs, 'vol')],
                                stdout=subprocess.DEVNULL)
        with pytest.raises(subprocess.TimeoutExpired):
            stat.wait(timeout=1)
        assert fs.wait_hung(1)
        stat.kill()
        with pytest.raises(subprocess.TimeoutExpired):
            stat.wait(timeout=0.5)
        fs.release()
        assert stat.wait(TIMEOUT) == -9

    def test_stop_cleans_up_while_every_call_hangs(self, fs):
        fs.hang()
        thread, box = start_call(os.stat, mnt(fs, 'anything'))
        assert fs.wait_hung(1)
        call(fs.stop)
        thread.join(TIMEOUT)
        assert not thread.is_alive()
        assert not fs.mounted
        assert not fs.alive


class TestDeath(object):

    def test_kill_gives_enotconn_and_restart_remounts(self, fs):
        call(write_file, mnt(fs, 'vol'), b'survives')
        pid = fs.pid
        fs.kill()
        assert errno_of(os.stat, mnt(fs, 'vol')) == errno.ENOTCONN
        assert fs.mounted  # a dead mount stays until unmounted

        call(fs.restart)
        assert fs.pid != pid
        assert call(read_file, mnt(fs, 'vol')) == b'survives'
        fs.eio(op='read')  # the new daemon takes commands
        assert errno_of(read_file, mnt(fs, 'vol')) == errno.EIO

    def test_stop_unmounts_a_dead_mount(self, fs):
        fs.kill()
        call(fs.stop)
        assert not fs.mounted
        assert os.listdir(fs.mountpoint) == []

    def test_daemon_unmounts_when_its_parent_dies(self, tmp_path):
        # The test process's stand-in: a parent that starts faultfs and is
        # then SIGKILLed, skipping every finalizer.
        (tmp_path / 'backing').mkdir()
        mountpoint = str(tmp_path / 'mnt')
        script = (
            'import sys, time\n'
            'from fuse_cinder.allinone import faultfs\n'
            'faultfs.FaultFS(sys.argv[1], sys.argv[2]).start()\n'
            'print("up", flush=True)\n'
            'time.sleep(600)\n')
        parent = subprocess.Popen(
            [sys.executable, '-c', script, str(tmp_path / 'backing'),
             mountpoint], cwd=_repo_root(), stdout=subprocess.PIPE)
        try:
            assert parent.stdout.readline() == b'up\n'
            assert faultfs.is_mounted(mountpoint)
        finally:
            parent.kill()
            parent.wait(TIMEOUT)
            parent.stdout.close()
        try:
            assert _wait(lambda: not faultfs.is_mounted(mountpoint))
        finally:
            faultfs.lazy_unmount(mountpoint)


class TestCommandLine(object):

    def test_python_dash_m_mounts_until_sigterm(self, tmp_path):
        (tmp_path / 'backing').mkdir()
        write_file(str(tmp_path / 'backing' / 'f'), b'hi')
        mountpoint = str(tmp_path / 'mnt')
        os.mkdir(mountpoint)
        proc = subprocess.Popen(
            [sys.executable, '-m', 'fuse_cinder.allinone.faultfs',
             str(tmp_path / 'backing'), mountpoint], cwd=_repo_root())
        try:
            assert _wait(lambda: faultfs.is_mounted(mountpoint))
            assert call(read_file, os.path.join(mountpoint, 'f')) == b'hi'
            proc.terminate()
            assert proc.wait(TIMEOUT) == 0
            assert not faultfs.is_mounted(mountpoint)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(TIMEOUT)
            faultfs.lazy_unmount(mountpoint)


def _repo_root():
    return os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))


def _wait(predicate, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False
