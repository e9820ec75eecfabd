#include "diffcal/parallel.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include <unistd.h>

namespace diffcal {

namespace {

int defaultThreadCount() {
    if (char const* env = std::getenv("DIFFCAL_NUM_THREADS")) {
        int n = std::atoi(env);
        if (n > 0) return n;
    }
    unsigned hw = std::thread::hardware_concurrency();
    return hw > 0 ? static_cast<int>(hw) : 1;
}

std::atomic<int> gNumThreads{0};  // 0 = not yet resolved

// True on pool workers and on a caller while it runs a parallel region: parallelFor calls made
// from inside a task run serially in that thread (a cell mapper calling clipped statistics, say),
// so the pool never waits on itself and never oversubscribes the cores.
thread_local bool tInsideRegion = false;

/// Persistent worker threads shared by every parallelFor call.
///
/// Starting threads per call cost tens of microseconds and a fresh stack each time, which
/// dominated small regions (one decorrelation cell runs several). Workers sleep on a condition
/// variable between regions. The pool is never destroyed: at process exit the sleeping workers
/// simply end with the process (joining them from a static destructor could run after the
/// interpreter tore down, and a forked child has no workers at all: it builds a new pool).
class Pool {
public:
    /// Run body(i), i in [0, nTasks), on the caller plus up to nWorkers pool threads.
    void run(std::ptrdiff_t nTasks, int nWorkers, std::function<void(std::ptrdiff_t)> const& body) {
        std::unique_lock<std::mutex> jobLock(_jobMutex, std::try_to_lock);
        if (!jobLock.owns_lock()) {  // another Python thread owns the pool: run here, serially
            serial(nTasks, body);
            return;
        }
        grow(nWorkers);
        {
            std::lock_guard<std::mutex> lk(_mutex);
            _body = &body;
            _nTasks = nTasks;
            _next.store(0);
            _error = nullptr;
            _wanted = nWorkers;
            ++_generation;
        }
        _wake.notify_all();
        tInsideRegion = true;
        work();
        tInsideRegion = false;
        std::exception_ptr error;
        {
            std::unique_lock<std::mutex> lk(_mutex);
            _done.wait(lk, [&] { return _active == 0; });
            _body = nullptr;  // late wakers see no job
            error = _error;
            _error = nullptr;
        }
        if (error) std::rethrow_exception(error);
    }

    static void serial(std::ptrdiff_t nTasks, std::function<void(std::ptrdiff_t)> const& body) {
        bool const outer = tInsideRegion;
        tInsideRegion = true;
        try {
            for (std::ptrdiff_t i = 0; i < nTasks; ++i) body(i);
        } catch (...) {
            tInsideRegion = outer;
            throw;
        }
        tInsideRegion = outer;
    }

private:
    void grow(int nWorkers) {
        while (static_cast<int>(_threads.size()) < nWorkers) {
            int const index = static_cast<int>(_threads.size());
            _threads.emplace_back([this, index] { loop(index); });
        }
    }

    /// Claim and run tasks until none is left; the first exception stops the hand-out.
    void work() {
        std::function<void(std::ptrdiff_t)> const& body = *_body;
        std::ptrdiff_t const n = _nTasks;
        for (;;) {
            std::ptrdiff_t const i = _next.fetch_add(1);
            if (i >= n) return;
            try {
                body(i);
            } catch (...) {
                std::lock_guard<std::mutex> lk(_mutex);
                if (!_error) _error = std::current_exception();
                _next.store(n);
            }
        }
    }

    void loop(int index) {
        tInsideRegion = true;
        std::uint64_t seen = 0;
        for (;;) {
            std::unique_lock<std::mutex> lk(_mutex);
            _wake.wait(lk, [&] { return _generation != seen; });
            seen = _generation;
            if (_body == nullptr || index >= _wanted) continue;
            ++_active;
            lk.unlock();
            work();
            lk.lock();
            if (--_active == 0) _done.notify_all();
        }
    }

    std::mutex _jobMutex;  // one region at a time
    std::mutex _mutex;     // guards the job fields below
    std::condition_variable _wake, _done;
    std::vector<std::thread> _threads;
    std::function<void(std::ptrdiff_t)> const* _body = nullptr;
    std::ptrdiff_t _nTasks = 0;
    std::atomic<std::ptrdiff_t> _next{0};
    std::exception_ptr _error;
    std::uint64_t _generation = 0;
    int _wanted = 0;
    int _active = 0;
};

Pool& pool() {
    static std::mutex creation;
    static Pool* instance = nullptr;
    static pid_t owner = 0;
    std::lock_guard<std::mutex> lk(creation);
    pid_t const pid = getpid();
    if (instance == nullptr || owner != pid) {
        instance = new Pool();  // intentionally never deleted (see Pool); a fork child gets its own
        owner = pid;
    }
    return *instance;
}

}  // namespace

int getNumThreads() {
    int n = gNumThreads.load();
    if (n <= 0) {
        n = defaultThreadCount();
        gNumThreads.store(n);
    }
    return n;
}

void setNumThreads(int n) { gNumThreads.store(n > 0 ? n : defaultThreadCount()); }

void parallelFor(std::ptrdiff_t nTasks, std::function<void(std::ptrdiff_t)> const& body) {
    if (nTasks <= 0) return;
    std::ptrdiff_t const nThreads = std::min<std::ptrdiff_t>(getNumThreads(), nTasks);
    if (nThreads <= 1 || tInsideRegion) {
        Pool::serial(nTasks, body);
        return;
    }
    pool().run(nTasks, static_cast<int>(nThreads - 1), body);
}

}  // namespace diffcal
