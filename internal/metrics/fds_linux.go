package metrics

import (
	"encoding/binary"
	"os"

	"golang.org/x/sys/unix"
)

// openFDs returns how many fds the process has open: the size Linux 6.2
// and later give /proc/self/fd, else its entries counted. At a million
// open fds the count reads a few MB of dirents but allocates no name per
// fd.
func openFDs() (int, error) {
	if fi, err := os.Stat("/proc/self/fd"); err == nil && fi.Size() > 0 {
		return int(fi.Size()), nil
	}
	return countFDs()
}

// countFDs counts the entries of /proc/self/fd, less the one it opens to
// read them.
func countFDs() (int, error) {
	fd, err := unix.Open("/proc/self/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	buf := make([]byte, 64<<10)
	n := 0
	for {
		m, err := unix.Getdents(fd, buf)
		if err != nil {
			return 0, err
		}
		if m <= 0 {
			return n - 1, nil
		}
		// linux_dirent64: ino 8, off 8, reclen 2, type 1, then the name.
		for off := 0; off+19 < m; {
			reclen := int(binary.NativeEndian.Uint16(buf[off+16:]))
			if reclen == 0 {
				break
			}
			if buf[off+19] != '.' { // not "." or ".."
				n++
			}
			off += reclen
		}
	}
}

// maxFDs returns the soft limit of open fds (RLIMIT_NOFILE).
func maxFDs() (uint64, error) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	return rl.Cur, nil
}
