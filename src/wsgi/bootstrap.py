"""Python-side helpers of rgun's WSGI bridge, loaded into each worker's interpreter.

Only what is simpler and more faithful in Python lives here: wsgi.file_wrapper and
the descriptor sendfile(2) takes from it. The request path itself is Rust.
"""


class FileWrapper:
    """wsgi.file_wrapper: rgun sends it with sendfile(2) when `filelike` has a real
    file descriptor, and iterates it in blocks otherwise."""

    def __init__(self, filelike, blksize=8192):
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __getitem__(self, key):
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise IndexError

    def __iter__(self):
        return self

    def __next__(self):
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration


def sendfile_fd(wrapper):
    """The (fd, offset) to sendfile from, or None when the file-like object has no
    usable descriptor."""
    filelike = wrapper.filelike
    try:
        fd = filelike.fileno()
        offset = filelike.tell()
    except Exception:
        return None
    if hasattr(filelike, "flush"):
        try:
            filelike.flush()
        except Exception:
            return None
    return fd, offset
