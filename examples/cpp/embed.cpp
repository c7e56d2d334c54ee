// Python inside a C++ server: the C++ server owns the sockets (plain epoll,
// one thread, the core's framing) and calls a Python handler once per read
// burst through pybind11's embedding API, the way teams with a C++ server
// script their game logic in Python.
//
//   fastpacket_embed [PORT] [MODULE:FUNCTION]   default fastpacket.examples.embed_echo:on_burst
//
// The handler is called as FUNCTION(batch, out): `batch` is a
// fastpacket.PacketBatch over the burst's bytes in this server's receive
// buffer (PacketBatch.over: no copy), `out` the connection's
// fastpacket.SendBuffer; what the handler queued in `out` is written with
// one send(2) per burst. The receive buffer is handed to Python as a Burst
// object exporting its bytes: if the handler keeps the batch (or a payload
// view) past its return, the Burst stays alive and this connection reads
// into a fresh one, so what Python holds never changes under it.
//
// FASTPACKET_EMBED_PATH (directories, ':'-separated) is added with
// site.addsitedir before the handler is imported: the site-packages where
// fastpacket is installed, when that is not the embedded Python's own (a
// virtual environment), and the handler's directory if it is elsewhere.
// It prints "port N" once listening and serves until SIGTERM/SIGINT. A
// handler that raises closes that connection (the traceback goes to stderr).
//
// pybind11 stays off the Python-facing hot path: per burst, C++ makes three
// calls into Python (PacketBatch.over, the handler, SendBuffer.flush); what
// happens per packet is fastpacket's native code.
#include <pybind11/embed.h>

#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <arpa/inet.h>
#include <cerrno>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "epoll_listener.hpp"
#include "fastpacket/framing.hpp"

namespace py = pybind11;
using namespace fastpacket;

namespace {

// Receive buffer per connection, bytes (the Python adapter's default recv ring).
constexpr std::size_t kRecvBytes = 256 * 1024;
// Send buffer per connection, bytes: a burst's whole echo fits (one flush per burst).
constexpr std::size_t kSendBytes = kRecvBytes;
// Unwritten bytes a slow peer may hold before it is cut off (the Python default max_pending_bytes).
constexpr std::size_t kMaxPendingBytes = 4 * 1024 * 1024;
constexpr int kMaxEvents = 256;
// References to a Burst while no batch holds it: this server's own.
constexpr Py_ssize_t kOwnRefs = 1;

volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

// A connection's receive buffer, exported read-only to Python: [0, len) is
// the burst's whole frames.
struct Burst {
    std::vector<std::uint8_t> mem;
    std::size_t len = 0;
    explicit Burst(std::size_t n) : mem(n) {}
};

}  // namespace

PYBIND11_EMBEDDED_MODULE(fastpacket_embed, m) {
    py::class_<Burst>(m, "Burst", py::buffer_protocol())
        .def_buffer([](Burst& b) {
            return py::buffer_info(b.mem.data(), 1, py::format_descriptor<std::uint8_t>::format(), 1,
                                   {static_cast<py::ssize_t>(b.len)}, {1}, /*readonly=*/true);
        });
}

namespace {

struct Conn {
    int fd = -1;
    py::object burst_obj;  // owns *burst
    Burst* burst = nullptr;
    std::size_t have = 0;  // [0, have) of burst->mem received, not yet handled
    py::object out;        // fastpacket.SendBuffer
    std::vector<std::uint8_t> backlog;  // written in part: the rest, sent on EPOLLOUT
    std::size_t backlog_off = 0;
    bool closing = false;
};

class Server {
public:
    Server(py::object handler, py::object batch_over, py::object send_buffer)
        : handler_(std::move(handler)), over_(std::move(batch_over)), send_buffer_(std::move(send_buffer)),
          layout_(game_layout()) {}

    int listen_on(std::uint16_t port) { return fastpacket_examples::listen_loopback(port, &lfd_, &ep_); }

    void run() {
        epoll_event events[kMaxEvents];
        while (!g_stop) {
            const int n = ::epoll_wait(ep_, events, kMaxEvents, -1);
            if (n < 0) {
                if (errno == EINTR) continue;
                std::perror("epoll_wait");
                return;
            }
            for (int i = 0; i < n; ++i) {
                Conn* c = static_cast<Conn*>(events[i].data.ptr);
                if (c == nullptr) {
                    accept_all();
                    continue;
                }
                if (c->closing) continue;
                if (events[i].events & EPOLLOUT) on_writable(c);
                if (!c->closing && (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) on_readable(c);
            }
            for (Conn* c : dead_) delete c;
            dead_.clear();
        }
    }

private:
    static py::object new_burst(Burst** out) {
        py::object o = py::cast(new Burst(kRecvBytes), py::return_value_policy::take_ownership);
        *out = o.cast<Burst*>();
        return o;
    }

    void accept_all() {
        for (;;) {
            const int fd = ::accept4(lfd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) return;  // EAGAIN, or a connection gone before accept
            int one = 1;
            ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            Conn* c = new Conn();
            c->fd = fd;
            c->burst_obj = new_burst(&c->burst);
            c->out = send_buffer_(kSendBytes);
            epoll_event ev{};
            ev.events = EPOLLIN;
            ev.data.ptr = c;
            ::epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev);
        }
    }

    void on_readable(Conn* c) {
        std::vector<std::uint8_t>& mem = c->burst->mem;
        const ssize_t r = ::recv(c->fd, mem.data() + c->have, mem.size() - c->have, 0);
        if (r <= 0) {
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
            close_conn(c);
            return;
        }
        c->have += static_cast<std::size_t>(r);
        const ScanResult s = scan_frames(layout_, mem.data(), c->have, static_cast<std::int64_t>(kDefaultMaxPacketSize));
        if (s.count) {
            c->burst->len = s.end;
            try {
                handler_(over_(c->burst_obj), c->out);  // the batch is released on return unless the handler kept it
            } catch (py::error_already_set& e) {
                std::fprintf(stderr, "handler error, closing the connection: %s\n", e.what());
                close_conn(c);
                return;
            }
            flush(c);
        }
        if (s.error) {
            close_conn(c);  // a bad header: the stream cannot resynchronise
            return;
        }
        if (s.end == 0) return;
        const std::size_t tail = c->have - s.end;
        if (c->burst_obj.ref_count() > kOwnRefs) {
            // Python still holds this burst: the partial frame after it goes to a fresh buffer
            Burst* old = c->burst;
            py::object fresh = new_burst(&c->burst);
            std::memcpy(c->burst->mem.data(), old->mem.data() + s.end, tail);
            c->burst_obj = std::move(fresh);
        } else if (tail) {
            std::memmove(mem.data(), mem.data() + s.end, tail);
        }
        c->have = tail;
    }

    // One write of what the handler queued; the rest of a partial write waits for EPOLLOUT.
    void flush(Conn* c) {
        if (c->closing) return;
        py::object view = c->out.attr("flush")();
        py::buffer_info info = py::buffer(view).request();
        const auto* p = static_cast<const std::uint8_t*>(info.ptr);
        const auto n = static_cast<std::size_t>(info.size);
        if (n == 0) return;
        if (c->backlog.size() > c->backlog_off) {  // still writing an earlier flush: queue behind it
            if (c->backlog.size() - c->backlog_off + n > kMaxPendingBytes) {
                close_conn(c);  // slow consumer
                return;
            }
            c->backlog.insert(c->backlog.end(), p, p + n);
            return;
        }
        const ssize_t w = ::send(c->fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN && errno != EINTR) {
            close_conn(c);
            return;
        }
        const std::size_t done = w > 0 ? static_cast<std::size_t>(w) : 0;
        if (done < n) {
            c->backlog.assign(p + done, p + n);
            c->backlog_off = 0;
            epoll_event ev{};
            ev.events = EPOLLOUT;  // reading pauses: no new work from a peer we cannot answer
            ev.data.ptr = c;
            ::epoll_ctl(ep_, EPOLL_CTL_MOD, c->fd, &ev);
        }
    }  // the view is released here: the SendBuffer reuses its chunk

    void on_writable(Conn* c) {
        const std::size_t left = c->backlog.size() - c->backlog_off;
        const ssize_t w = ::send(c->fd, c->backlog.data() + c->backlog_off, left, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno != EAGAIN && errno != EINTR) close_conn(c);
            return;
        }
        c->backlog_off += static_cast<std::size_t>(w);
        if (c->backlog_off < c->backlog.size()) return;
        c->backlog.clear();
        c->backlog_off = 0;
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.ptr = c;
        ::epoll_ctl(ep_, EPOLL_CTL_MOD, c->fd, &ev);
    }

    void close_conn(Conn* c) {
        if (c->closing) return;
        c->closing = true;
        ::close(c->fd);      // also removes it from the epoll set
        dead_.push_back(c);  // freed after this iteration: events may still name it
    }

    py::object handler_, over_, send_buffer_;
    Layout layout_;
    int lfd_ = -1;
    int ep_ = -1;
    std::vector<Conn*> dead_;
};

}  // namespace

int main(int argc, char** argv) {
    const long port = argc > 1 ? std::strtol(argv[1], nullptr, 10) : 0;
    const std::string target = argc > 2 ? argv[2] : "fastpacket.examples.embed_echo:on_burst";
    const std::size_t colon = target.find(':');
    if (port < 0 || port > 65535 || colon == std::string::npos) {
        std::fprintf(stderr, "usage: %s [PORT] [MODULE:FUNCTION]\n", argv[0]);
        return 2;
    }
    std::signal(SIGTERM, on_signal);
    std::signal(SIGINT, on_signal);
    std::signal(SIGPIPE, SIG_IGN);
    py::scoped_interpreter python;
    try {
        if (const char* dirs = std::getenv("FASTPACKET_EMBED_PATH")) {
            py::object addsitedir = py::module_::import("site").attr("addsitedir");
            for (py::handle d : py::str(dirs).attr("split")(":")) {
                if (py::len(d)) addsitedir(d);
            }
        }
        py::module_::import("fastpacket_embed");  // registers the Burst type
        py::module_ fp = py::module_::import("fastpacket");
        py::object handler =
            py::module_::import(target.substr(0, colon).c_str()).attr(target.substr(colon + 1).c_str());
        Server server(handler, fp.attr("PacketBatch").attr("over"), fp.attr("SendBuffer"));
        const int bound = server.listen_on(static_cast<std::uint16_t>(port));
        if (bound < 0) {
            std::perror("listen");
            return 1;
        }
        std::printf("port %d\n", bound);
        std::fflush(stdout);
        server.run();
    } catch (py::error_already_set& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
    return 0;
}
