"""A zlib stand-in for protocols.xmlrpc that counts the work done inflating gzip bodies.

Timing a decompression on a shared 2-core machine proves nothing; counting the bytes fed to
each inflater proves that a body is read a bounded number of times, whatever the machine."""
from __future__ import annotations

import zlib

import protocols.xmlrpc as xmlrpc_mod


def counting_zlib(monkeypatch) -> list[int]:
    """Make protocols.xmlrpc's zlib record the length of every input fed to an inflater (a 0
    marks each new inflater, that is each gzip member begun).  Serves a server thread of this
    process as well as a direct call."""
    fed: list[int] = []

    class CountingZlib:
        error = zlib.error
        DEFLATED = zlib.DEFLATED
        compressobj = staticmethod(zlib.compressobj)

        @staticmethod
        def decompressobj(*args, **kwargs):
            real = zlib.decompressobj(*args, **kwargs)
            fed.append(0)

            class Counting:
                def decompress(self, data, *rest):
                    fed.append(len(data))
                    return real.decompress(data, *rest)

                def __getattr__(self, name):
                    return getattr(real, name)
            return Counting()

    monkeypatch.setattr(xmlrpc_mod, "zlib", CountingZlib)
    return fed
