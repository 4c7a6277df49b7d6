"""A small, fast `selectors` reactor with the Cookbook 11.12 handler interface."""
from .connector import Connector, connect_tcp, connect_unix
from .core import Reactor
from .datagram import DatagramHandler, bind_udp
from .handler import EventHandler
from .listener import Listener, listen_tcp, listen_unix, parse_networks, peer_allowed
from .stream import StreamHandler
from .timers import Timer
from .tls import TLSStreamHandler, start_tls

__all__ = ["Connector", "DatagramHandler", "EventHandler", "Listener", "Reactor", "StreamHandler",
           "TLSStreamHandler", "Timer", "bind_udp", "connect_tcp", "connect_unix", "listen_tcp",
           "listen_unix", "parse_networks", "peer_allowed", "start_tls"]
