// The C++ reference server: fastpacket's echo and relay apps
// (fastpacket/apps/echo.py, relay.py) written the way a C++ game-server
// developer writes them, on the header-only core (fastpacket::core) and plain
// epoll, one thread. `fastpacket bench echo` measures the Python servers
// against it; it also documents embedding the core in a C++ server.
//
//   fastpacket_server echo  [PORT]            echo every packet back, byte for byte
//   fastpacket_server relay [PORT] [ROOMS]    rooms, JOIN/LEAVE/MOVE as relay.py
//
// It prints "port N" on stdout once listening (PORT 0: the kernel picks) and
// serves until SIGTERM/SIGINT.
//
// The same rules as the Python adapter, which keep kernel time low: one
// recv per readiness event (no speculative read that would return EAGAIN),
// replies coalesced in a SendBuffer and written once per read burst (echo)
// or once per loop iteration (relay fan-out), TCP_NODELAY since we coalesce
// ourselves. A peer that stops reading: its unwritten bytes wait in a
// bounded backlog, reading from it pauses, and past kMaxPendingBytes it is
// cut off. A bad frame closes the connection after the packets before it.
#include <algorithm>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <unordered_map>
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
#include "fastpacket/sendbuf.hpp"

using namespace fastpacket;

namespace {

// Receive buffer per connection, bytes: the Python adapter's default recv ring.
constexpr std::size_t kRecvBytes = 256 * 1024;
// Send buffer per connection, bytes (the Python default send_buffer).
constexpr std::size_t kSendBytes = 64 * 1024;
// Unwritten bytes a slow peer may hold before it is cut off (the Python default max_pending_bytes).
constexpr std::size_t kMaxPendingBytes = 4 * 1024 * 1024;
// Events taken from one epoll_wait.
constexpr int kMaxEvents = 256;
constexpr std::uint16_t kMove = 1, kJoin = 2, kLeave = 3;
constexpr std::uint32_t kDefaultRooms = 16;

volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

struct Conn {
    int fd = -1;
    std::vector<std::uint8_t> in;   // kRecvBytes; [0, have) received, not yet framed
    std::size_t have = 0;
    std::vector<std::uint8_t> out;  // the SendBuffer's memory
    SendBuffer sb;
    std::vector<std::uint8_t> backlog;  // written in part: the rest, sent on EPOLLOUT
    std::size_t backlog_off = 0;
    bool dirty = false;              // on the dirty list (relay: output from other bursts)
    bool closing = false;
    std::int64_t room = -1;
    std::size_t room_slot = 0;       // index in its room's member list
    explicit Conn(int f) : fd(f), in(kRecvBytes), out(kSendBytes), sb(game_layout(), kSendBytes) {
        sb.attach(out.data());
    }
};

class Server {
public:
    Server(bool relay, std::uint32_t rooms) : relay_(relay), rooms_(rooms), layout_(game_layout()) {}

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
            // end of the loop iteration: the relay's fan-out goes out, one write per member
            for (Conn* c : dirty_) {
                c->dirty = false;
                if (!c->closing) flush(c);
            }
            dirty_.clear();
            for (Conn* c : dead_) delete c;
            dead_.clear();
        }
    }

private:
    void accept_all() {
        for (;;) {
            const int fd = ::accept4(lfd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) return;  // EAGAIN, or a connection gone before accept: nothing to do
            int one = 1;
            ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            Conn* c = new Conn(fd);
            epoll_event ev{};
            ev.events = EPOLLIN;
            ev.data.ptr = c;
            ::epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev);
        }
    }

    void on_readable(Conn* c) {
        const ssize_t r = ::recv(c->fd, c->in.data() + c->have, c->in.size() - c->have, 0);
        if (r <= 0) {
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
            close_conn(c);
            return;
        }
        c->have += static_cast<std::size_t>(r);
        const ScanResult s = scan_frames(layout_, c->in.data(), c->have, static_cast<std::int64_t>(kDefaultMaxPacketSize));
        if (s.count) {
            if (relay_)
                relay_burst(c, c->in.data(), s.end);
            else
                queue(c, c->in.data(), s.end);
        }
        if (!c->closing) flush(c);  // this session's replies: one write per read burst
        if (s.error) {
            close_conn(c);  // a bad header: the stream cannot resynchronise
            return;
        }
        if (s.end) {
            c->have -= s.end;
            if (c->have) std::memmove(c->in.data(), c->in.data() + s.end, c->have);
        }
    }

    // Appends whole frames [data, data + n) to c's send buffer as they are
    // (headers, seq included): one copy; flushes first when it is full.
    void queue(Conn* c, const std::uint8_t* data, std::size_t n) {
        const std::int64_t whole = 0;
        const auto size = static_cast<std::uint32_t>(n);
        if (c->sb.append_frames(data, &whole, &size, 1) == SendStatus::ok) return;
        flush(c);  // no room: write what is queued, then frame by frame (a run may exceed the buffer)
        std::size_t pos = 0;
        while (pos < n && !c->closing) {
            const auto fsize = static_cast<std::uint32_t>(load_unsigned(data + pos, 2, false));
            const auto off = static_cast<std::int64_t>(pos);
            if (c->sb.append_frames(data, &off, &fsize, 1) != SendStatus::ok) {
                flush(c);
                if (c->closing || c->sb.append_frames(data, &off, &fsize, 1) != SendStatus::ok) return;
            }
            pos += fsize;
        }
    }

    // The relay's rules for one read burst (relay.py): JOIN moves the sender
    // to a room and is echoed back; LEAVE leaves; MOVE goes to every member of
    // the sender's room (the sender too), joining room player_id % rooms first
    // if it has none. Runs of MOVEs are fanned out as one copy per member.
    void relay_burst(Conn* c, const std::uint8_t* data, std::size_t n) {
        std::size_t pos = 0;
        while (pos < n && !c->closing) {
            const std::size_t size = load_unsigned(data + pos, 2, false);
            const std::uint64_t type = load_unsigned(data + pos + 2, 2, false);
            if (type == kMove) {
                std::size_t end = pos + size;  // the run of MOVEs starting here
                while (end < n && load_unsigned(data + end + 2, 2, false) == kMove)
                    end += load_unsigned(data + end, 2, false);
                if (c->room < 0) join(c, static_cast<std::uint32_t>(load_unsigned(data + pos + 8, 4, false) % rooms_));
                std::vector<Conn*>& members = rooms_map_[c->room];
                for (std::size_t k = 0; k < members.size();) {
                    Conn* m = members[k];
                    queue(m, data + pos, end - pos);
                    if (m != c && !m->dirty && !m->closing) {
                        m->dirty = true;
                        dirty_.push_back(m);
                    }
                    if (k < members.size() && members[k] == m) ++k;  // else m was cut off: slot k holds another
                }
                pos = end;
                continue;
            }
            if (type == kJoin) {
                if (size < std::size_t{layout_.header_size} + 4) {
                    close_conn(c);  // bad JOIN
                    return;
                }
                join(c, static_cast<std::uint32_t>(load_unsigned(data + pos + layout_.header_size, 4, false)));
                queue(c, data + pos, size);  // acknowledged at once: no bus here
            } else if (type == kLeave) {
                leave(c);
            }
            pos += size;
        }
    }

    void join(Conn* c, std::uint32_t room) {
        if (c->room == static_cast<std::int64_t>(room)) return;
        leave(c);
        std::vector<Conn*>& members = rooms_map_[room];
        c->room = room;
        c->room_slot = members.size();
        members.push_back(c);
    }

    void leave(Conn* c) {
        if (c->room < 0) return;
        std::vector<Conn*>& members = rooms_map_[c->room];
        Conn* last = members.back();  // swap-remove: O(1)
        members[c->room_slot] = last;
        last->room_slot = c->room_slot;
        members.pop_back();
        c->room = -1;
    }

    // One write of what is queued; the rest of a partial write waits for EPOLLOUT.
    void flush(Conn* c) {
        if (c->sb.count() == 0) return;
        const std::uint8_t* p = c->sb.data();
        std::size_t n = c->sb.size();
        if (c->backlog.size() > c->backlog_off) {  // still writing an earlier flush: queue behind it
            if (c->backlog.size() - c->backlog_off + n > kMaxPendingBytes) {
                close_conn(c);  // slow consumer
                return;
            }
            c->backlog.insert(c->backlog.end(), p, p + n);
            c->sb.attach(c->out.data());
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
        c->sb.attach(c->out.data());
    }

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
        flush(c);
    }

    void close_conn(Conn* c) {
        if (c->closing) return;
        c->closing = true;
        leave(c);
        ::close(c->fd);  // also removes it from the epoll set
        dead_.push_back(c);  // freed after this iteration: events and the dirty list may still name it
    }

    bool relay_;
    std::uint32_t rooms_;
    Layout layout_;
    int lfd_ = -1;
    int ep_ = -1;
    std::unordered_map<std::int64_t, std::vector<Conn*>> rooms_map_;
    std::vector<Conn*> dirty_;
    std::vector<Conn*> dead_;
};

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2 || (std::strcmp(argv[1], "echo") != 0 && std::strcmp(argv[1], "relay") != 0)) {
        std::fprintf(stderr, "usage: %s echo|relay [PORT] [ROOMS]\n", argv[0]);
        return 2;
    }
    const bool relay = std::strcmp(argv[1], "relay") == 0;
    const long port = argc > 2 ? std::strtol(argv[2], nullptr, 10) : 0;
    const long rooms = argc > 3 ? std::strtol(argv[3], nullptr, 10) : kDefaultRooms;
    if (port < 0 || port > 65535 || rooms < 1 || rooms > 1 << 20) {
        std::fprintf(stderr, "PORT must be 0..65535 and ROOMS 1..%d\n", 1 << 20);
        return 2;
    }
    std::signal(SIGTERM, on_signal);
    std::signal(SIGINT, on_signal);
    std::signal(SIGPIPE, SIG_IGN);
    Server server(relay, static_cast<std::uint32_t>(rooms));
    const int bound = server.listen_on(static_cast<std::uint16_t>(port));
    if (bound < 0) {
        std::perror("listen");
        return 1;
    }
    std::printf("port %d\n", bound);
    std::fflush(stdout);
    server.run();
    return 0;
}
