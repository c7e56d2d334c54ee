// The C++ load generator behind `fastpacket bench echo`: light enough to
// saturate one server core from one client core, so the rows measure the
// server, not the client. One thread, plain epoll, the core's framing.
//
//   fastpacket_loadgen echo HOST PORT CONNS SECONDS [BLOCK_PACKETS] [WINDOW_BLOCKS]
//       pipelined echo: each connection keeps WINDOW_BLOCKS blocks of
//       BLOCK_PACKETS packets in flight and checks every byte that comes
//       back against what it sent (the echo must be byte for byte, in order)
//   fastpacket_loadgen move HOST PORT PLAYERS SECONDS ROOMS WINDOW [PAYLOAD]
//       the relay's MOVE load (fastpacket/apps/relay.py): each player JOINs
//       room i % ROOMS, waits for its JOIN back, then keeps WINDOW of its own
//       MOVEs in flight; every MOVE of the room must arrive exactly once
//       and in order per sender; RTT of its own MOVEs (send time in payload)
//
// Protocol with the harness: once every connection is up (and joined) it
// prints "ready" and waits for a line on stdin; then it runs SECONDS, drains
// what is in flight (bounded), and prints one JSON line of results.
#include <algorithm>
#include <chrono>
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

#include "fastpacket/framing.hpp"
#include "fastpacket/sendbuf.hpp"

using namespace fastpacket;

namespace {

constexpr std::uint16_t kMove = 1, kJoin = 2;
// Seconds the load waits for what is in flight once it stops sending.
constexpr double kDrainSeconds = 10.0;
// Seconds every player has to get its JOIN back before the load gives up.
constexpr double kJoinSeconds = 20.0;
constexpr std::size_t kRecvBytes = 256 * 1024;
constexpr std::size_t kMovePayloadMin = 20;  // x, y, z: i32, sent_ns: u64
constexpr int kMaxEvents = 256;
constexpr std::uint32_t kFirstPlayerId = 1;

std::uint64_t now_ns() {
    return static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
            .count());
}

[[noreturn]] void die(const char* what) {
    std::fprintf(stderr, "fastpacket_loadgen: %s: %s\n", what, std::strerror(errno));
    std::exit(1);
}

int connect_to(const char* host, int port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    if (::inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        std::fprintf(stderr, "fastpacket_loadgen: HOST must be an IPv4 address, got %s\n", host);
        std::exit(2);
    }
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) die("connect");
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

void set_nonblocking(int fd) {
    const int fl = ::fcntl(fd, F_GETFL);
    if (fl < 0 || ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) die("fcntl");
}

void wait_for_go() {
    std::printf("ready\n");
    std::fflush(stdout);
    char line[64];
    if (std::fgets(line, sizeof line, stdin) == nullptr) std::exit(0);  // the harness went away
}

// GAME packets with seq 0..n-1, payloads of 20..64 pseudo-random bytes.
std::vector<std::uint8_t> build_block(std::size_t packets, std::uint32_t seed) {
    std::vector<std::uint8_t> out(packets * (12 + 64));
    std::vector<std::uint8_t> payload(64);
    SendBuffer sb(game_layout(), out.size());
    sb.attach(out.data());
    std::uint32_t x = seed * 2654435761u + 1;
    for (std::size_t i = 0; i < packets; ++i) {
        x = x * 1664525u + 1013904223u;
        const std::size_t n = 20 + (x >> 24) % 45;
        for (auto& b : payload) b = static_cast<std::uint8_t>((x = x * 1664525u + 1013904223u) >> 24);
        EncodeError err{};
        std::uint64_t seq_used = 0;
        sb.send(1, payload.data(), n, seed, true, i, &seq_used, &err);
    }
    out.resize(sb.size());
    return out;
}

// ---------------------------------------------------------------------------
// echo

struct EchoConn {
    int fd;
    const std::vector<std::uint8_t>* block;
    std::uint64_t sent = 0, received = 0;
    std::size_t send_off = 0;  // offset in the block of the next byte to send
    bool error = false;
};

int run_echo(const char* host, int port, int conns, double seconds, std::size_t block_packets, std::size_t window) {
    std::vector<std::vector<std::uint8_t>> blocks;
    for (int i = 0; i < std::min(conns, 16); ++i) blocks.push_back(build_block(block_packets, static_cast<std::uint32_t>(i)));
    std::vector<EchoConn> cs(static_cast<std::size_t>(conns));
    const int ep = ::epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < conns; ++i) {
        EchoConn& c = cs[static_cast<std::size_t>(i)];
        c.fd = connect_to(host, port);
        c.block = &blocks[static_cast<std::size_t>(i) % blocks.size()];
        set_nonblocking(c.fd);
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.ptr = &c;
        ::epoll_ctl(ep, EPOLL_CTL_ADD, c.fd, &ev);
    }
    wait_for_go();
    std::vector<std::uint8_t> buf(kRecvBytes);
    const std::uint64_t t0 = now_ns();
    const std::uint64_t stop = t0 + static_cast<std::uint64_t>(seconds * 1e9);
    const std::uint64_t drain_end = stop + static_cast<std::uint64_t>(kDrainSeconds * 1e9);
    bool stopping = false;
    // keeps `window` blocks' bytes in flight: sends whole remaining parts of the block
    auto top_up = [&](EchoConn& c) {
        const std::size_t bsize = c.block->size();
        while (c.sent - c.received < window * bsize) {
            const std::size_t n = bsize - c.send_off;
            const ssize_t w = ::send(c.fd, c.block->data() + c.send_off, n, MSG_NOSIGNAL);
            if (w <= 0) return;  // the socket buffer is full: the next echo makes room
            c.sent += static_cast<std::uint64_t>(w);
            c.send_off = (c.send_off + static_cast<std::size_t>(w)) % bsize;
        }
    };
    for (auto& c : cs) top_up(c);
    std::size_t outstanding = cs.size();
    epoll_event events[kMaxEvents];
    while (outstanding) {
        const std::uint64_t t = now_ns();
        if (!stopping && t >= stop) stopping = true;
        if (t >= drain_end) break;
        const int n = ::epoll_wait(ep, events, kMaxEvents, 10);
        for (int i = 0; i < n; ++i) {
            EchoConn& c = *static_cast<EchoConn*>(events[i].data.ptr);
            const ssize_t r = ::recv(c.fd, buf.data(), buf.size(), 0);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                c.error = true;
                ::epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr);
                --outstanding;
                continue;
            }
            // byte check: the echo of a stream of repeated blocks
            const std::vector<std::uint8_t>& b = *c.block;
            std::size_t off = static_cast<std::size_t>(c.received % b.size());
            std::size_t k = 0;
            while (k < static_cast<std::size_t>(r)) {
                const std::size_t m = std::min(static_cast<std::size_t>(r) - k, b.size() - off);
                if (std::memcmp(buf.data() + k, b.data() + off, m) != 0) c.error = true;
                k += m;
                off = 0;
            }
            c.received += static_cast<std::uint64_t>(r);
            if (c.received > c.sent) c.error = true;
            if (!stopping) {
                top_up(c);
            } else if (c.received == c.sent && c.send_off == 0) {
                ::epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr);
                --outstanding;
            } else if (c.received == c.sent) {
                top_up(c);  // finish the block in progress so the count stays whole blocks
            }
        }
    }
    const double elapsed = static_cast<double>(now_ns() - t0) * 1e-9;
    std::uint64_t packets = 0, bytes = 0;
    std::string errors;
    for (std::size_t i = 0; i < cs.size(); ++i) {
        const EchoConn& c = cs[i];
        packets += c.received / c.block->size() * block_packets;
        bytes += c.received;
        if (c.error || c.received != c.sent) {
            if (!errors.empty()) errors += ", ";
            errors += "\"connection " + std::to_string(i) + ": " +
                      (c.error ? std::string("echoed bytes differ from sent bytes or connection lost")
                               : std::to_string(c.sent - c.received) + " bytes never came back") + "\"";
        }
        ::close(c.fd);
    }
    std::printf("{\"mode\": \"echo\", \"connections\": %d, \"seconds\": %.6f, \"packets\": %llu, \"bytes\": %llu, "
                "\"packets_per_s\": %.1f, \"ok\": %s, \"errors\": [%s]}\n",
                conns, elapsed, static_cast<unsigned long long>(packets), static_cast<unsigned long long>(bytes),
                static_cast<double>(packets) / elapsed, errors.empty() ? "true" : "false", errors.c_str());
    return errors.empty() ? 0 : 1;
}

// ---------------------------------------------------------------------------
// move

struct Player {
    int fd;
    std::uint32_t index, room;
    std::vector<std::uint8_t> in;
    std::size_t have = 0;
    std::vector<std::uint8_t> out;
    SendBuffer sb;
    std::uint32_t sent = 0;        // MOVEs sent; the next one's seq
    std::uint32_t in_flight = 0;   // own MOVEs not yet back
    bool joined = false;
    bool error = false;
    std::vector<std::uint32_t> next;  // per sender index: the seq expected next
    std::uint64_t received = 0, duplicates = 0, out_of_order = 0;
    Player(int f, std::uint32_t i, std::uint32_t r, std::size_t players)
        : fd(f), index(i), room(r), in(kRecvBytes), out(64 * 1024), sb(game_layout(), 64 * 1024), next(players, 0) {
        sb.attach(out.data());
    }
};

void write_all(Player& p) {
    std::size_t off = 0;
    while (off < p.sb.size()) {
        const ssize_t w = ::send(p.fd, p.sb.data() + off, p.sb.size() - off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;  // a few MOVEs at most: spin rather than buffer
            p.error = true;
            break;
        }
        off += static_cast<std::size_t>(w);
    }
    p.sb.attach(p.out.data());
}

void queue_moves(Player& p, std::uint32_t n, std::size_t payload_size) {
    std::vector<std::uint8_t> payload(payload_size, 0);
    for (std::uint32_t k = 0; k < n; ++k) {
        const std::uint64_t t = now_ns();
        std::int32_t x = static_cast<std::int32_t>(p.sent), y = 0, z = 0;
        std::memcpy(payload.data(), &x, 4);
        std::memcpy(payload.data() + 4, &y, 4);
        std::memcpy(payload.data() + 8, &z, 4);
        std::memcpy(payload.data() + 12, &t, 8);
        EncodeError err{};
        std::uint64_t seq_used = 0;
        p.sb.send(kMove, payload.data(), payload_size, kFirstPlayerId + p.index, true, p.sent, &seq_used, &err);
        ++p.sent;
        ++p.in_flight;
    }
}

double pct(std::vector<std::uint32_t>& v, double q) {
    if (v.empty()) return 0.0;
    const std::size_t k = std::min(v.size() - 1, static_cast<std::size_t>(q / 100.0 * static_cast<double>(v.size())));
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
    return v[k] / 1000.0;
}

int run_move(const char* host, int port, std::uint32_t players, double seconds, std::uint32_t rooms,
             std::uint32_t window, std::size_t payload_size) {
    std::vector<Player*> ps;
    const int ep = ::epoll_create1(EPOLL_CLOEXEC);
    for (std::uint32_t i = 0; i < players; ++i) {
        Player* p = new Player(connect_to(host, port), i, i % rooms, players);
        set_nonblocking(p->fd);
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.ptr = p;
        ::epoll_ctl(ep, EPOLL_CTL_ADD, p->fd, &ev);
        std::uint8_t room[4];
        std::memcpy(room, &p->room, 4);
        EncodeError err{};
        std::uint64_t seq_used = 0;
        p->sb.send(kJoin, room, 4, kFirstPlayerId + i, true, 0, &seq_used, &err);
        write_all(*p);
        ps.push_back(p);
    }
    std::vector<std::uint32_t> rtt_ns;
    rtt_ns.reserve(1 << 22);
    bool running = false, stopping = false;
    std::uint64_t stop = 0, drain_end = 0, t0 = 0;
    std::uint32_t joined = 0;
    const std::uint64_t join_end = now_ns() + static_cast<std::uint64_t>(kJoinSeconds * 1e9);
    epoll_event events[kMaxEvents];
    const Layout layout = game_layout();
    for (;;) {
        const std::uint64_t t = now_ns();
        if (!running && joined == players) {
            wait_for_go();
            running = true;
            t0 = now_ns();
            stop = t0 + static_cast<std::uint64_t>(seconds * 1e9);
            drain_end = stop + static_cast<std::uint64_t>(kDrainSeconds * 1e9);
            for (Player* p : ps) {
                queue_moves(*p, window, payload_size);
                write_all(*p);
            }
            continue;
        }
        if (!running && t >= join_end) {
            std::fprintf(stderr, "fastpacket_loadgen: %u of %u players got their JOIN back\n", joined, players);
            return 1;
        }
        if (running && !stopping && t >= stop) stopping = true;
        if (stopping) {
            // done once every player has heard every MOVE of its room (its own
            // coming back does not mean the copies to the others were read yet)
            std::vector<std::uint64_t> room_sent(rooms, 0);
            std::uint64_t expected = 0, got = 0;
            for (Player* p : ps) room_sent[p->room] += p->sent;
            for (Player* p : ps) {
                if (p->error) continue;
                expected += room_sent[p->room];
                got += p->received;
            }
            if (got >= expected || t >= drain_end) break;
        }
        const int n = ::epoll_wait(ep, events, kMaxEvents, 10);
        for (int i = 0; i < n; ++i) {
            Player& p = *static_cast<Player*>(events[i].data.ptr);
            const ssize_t r = ::recv(p.fd, p.in.data() + p.have, p.in.size() - p.have, 0);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                p.error = true;
                ::epoll_ctl(ep, EPOLL_CTL_DEL, p.fd, nullptr);
                continue;
            }
            p.have += static_cast<std::size_t>(r);
            const ScanResult s = scan_frames(layout, p.in.data(), p.have, static_cast<std::int64_t>(kDefaultMaxPacketSize));
            const std::uint64_t now = now_ns();
            std::uint32_t back = 0;
            std::size_t pos = 0;
            for (std::size_t k = 0; k < s.count; ++k) {
                const std::uint8_t* h = p.in.data() + pos;
                const std::size_t size = load_unsigned(h, 2, false);
                const std::uint64_t type = load_unsigned(h + 2, 2, false);
                const auto seq = static_cast<std::uint32_t>(load_unsigned(h + 4, 4, false));
                const std::uint64_t pid = load_unsigned(h + 8, 4, false);
                pos += size;
                if (type == kJoin && pid == kFirstPlayerId + p.index && !p.joined) {
                    p.joined = true;
                    ++joined;
                    continue;
                }
                if (type != kMove || size < 12 + kMovePayloadMin || pid < kFirstPlayerId ||
                    pid - kFirstPlayerId >= players) {
                    p.error = true;
                    continue;
                }
                const std::uint64_t sender = pid - kFirstPlayerId;
                std::uint32_t& expect = p.next[sender];
                if (seq == expect) {
                    ++expect;
                    ++p.received;
                } else if (seq < expect) {
                    ++p.duplicates;
                } else {
                    ++p.out_of_order;
                    expect = seq + 1;
                    ++p.received;
                }
                if (sender == p.index) {
                    std::uint64_t sent_ns;
                    std::memcpy(&sent_ns, h + 12 + 12, 8);
                    rtt_ns.push_back(static_cast<std::uint32_t>(std::min<std::uint64_t>(now - sent_ns, UINT32_MAX)));
                    ++back;
                    --p.in_flight;
                }
            }
            if (s.error) p.error = true;
            p.have -= s.end;
            if (p.have) std::memmove(p.in.data(), p.in.data() + s.end, p.have);
            if (back && running && !stopping) {
                queue_moves(p, back, payload_size);
                write_all(p);
            }
        }
    }
    const double elapsed = static_cast<double>(now_ns() - t0) * 1e-9;
    std::uint64_t moves = 0, deliveries = 0, expected = 0, dups = 0, ooo = 0, errors = 0;
    for (Player* p : ps) {
        moves += p->sent;
        deliveries += p->received;
        dups += p->duplicates;
        ooo += p->out_of_order;
        errors += p->error;
        for (Player* q : ps)
            if (q->room == p->room) expected += q->sent;
    }
    const std::uint64_t missing = expected > deliveries ? expected - deliveries : 0;
    const bool ok = missing == 0 && dups == 0 && ooo == 0 && errors == 0;
    std::printf("{\"mode\": \"move\", \"players\": %u, \"rooms\": %u, \"seconds\": %.6f, \"moves\": %llu, "
                "\"moves_per_s\": %.1f, \"deliveries\": %llu, \"missing\": %llu, \"duplicates\": %llu, "
                "\"out_of_order\": %llu, \"connection_errors\": %llu, \"rtt_us\": {\"p50\": %.1f, \"p99\": %.1f}, "
                "\"ok\": %s}\n",
                players, rooms, elapsed, static_cast<unsigned long long>(moves), static_cast<double>(moves) / elapsed,
                static_cast<unsigned long long>(deliveries), static_cast<unsigned long long>(missing),
                static_cast<unsigned long long>(dups), static_cast<unsigned long long>(ooo),
                static_cast<unsigned long long>(errors), pct(rtt_ns, 50), pct(rtt_ns, 99), ok ? "true" : "false");
    for (Player* p : ps) {
        ::close(p->fd);
        delete p;
    }
    return ok ? 0 : 1;
}

long arg(int argc, char** argv, int i, long fallback, long lo, long hi, const char* name) {
    if (i >= argc) return fallback;
    char* end = nullptr;
    const long v = std::strtol(argv[i], &end, 10);
    if (*end != '\0' || v < lo || v > hi) {
        std::fprintf(stderr, "fastpacket_loadgen: %s must be an integer in %ld..%ld, got %s\n", name, lo, hi, argv[i]);
        std::exit(2);
    }
    return v;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 6 || (std::strcmp(argv[1], "echo") != 0 && std::strcmp(argv[1], "move") != 0)) {
        std::fprintf(stderr,
                     "usage: %s echo HOST PORT CONNS SECONDS [BLOCK_PACKETS] [WINDOW_BLOCKS]\n"
                     "       %s move HOST PORT PLAYERS SECONDS ROOMS WINDOW [PAYLOAD]\n",
                     argv[0], argv[0]);
        return 2;
    }
    const int port = static_cast<int>(arg(argc, argv, 3, 0, 1, 65535, "PORT"));
    const long conns = arg(argc, argv, 4, 0, 1, 100000, "CONNS/PLAYERS");
    const double seconds = std::strtod(argv[5], nullptr);
    if (!(seconds > 0 && seconds < 3600)) {
        std::fprintf(stderr, "fastpacket_loadgen: SECONDS must be in (0, 3600), got %s\n", argv[5]);
        return 2;
    }
    if (std::strcmp(argv[1], "echo") == 0)
        return run_echo(argv[2], port, static_cast<int>(conns), seconds,
                        static_cast<std::size_t>(arg(argc, argv, 6, 64, 1, 1024, "BLOCK_PACKETS")),
                        static_cast<std::size_t>(arg(argc, argv, 7, 4, 1, 64, "WINDOW_BLOCKS")));
    if (conns > 4096) {
        std::fprintf(stderr, "fastpacket_loadgen: at most 4096 players\n");
        return 2;
    }
    return run_move(argv[2], port, static_cast<std::uint32_t>(conns), seconds,
                    static_cast<std::uint32_t>(arg(argc, argv, 6, 16, 1, 4096, "ROOMS")),
                    static_cast<std::uint32_t>(arg(argc, argv, 7, 8, 1, 1024, "WINDOW")),
                    static_cast<std::size_t>(arg(argc, argv, 8, kMovePayloadMin, kMovePayloadMin, 1024, "PAYLOAD")));
}
