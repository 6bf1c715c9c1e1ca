// memlab's allocation recorder: wraps PyTorch's CPU allocator to see every allocation and free.
//
// Why by hand: torch.profiler(profile_memory=True) sees the same c10 allocator events, but costs
// ~14 us per op on a 2-core CPU and hands them over only after the block; a dispatch-level
// TorchDispatchMode misses op-internal buffers (convolution backward's columns, for one).
// Wrapping the allocator costs a mutex and a hash-map insert per allocation and keeps an exact
// live total that can be read at any moment (the live chart samples it).
//
// Model (mirrors c10/core/CPUAllocator.cpp, ProfiledCPUMemoryReporter): every block handed out
// while installed is put in a size table keyed by its address; the free looks the size up. A
// storage allocated before installation can be *adopted* (its deleter swapped for ours with
// DataPtr::compare_exchange_deleter), so its free is seen too -- the profiler misses those.
//
// The C ABI below is loaded with ctypes (memlab/tracking/_native.py); no pybind11, no torch/extension.h,
// which keeps the one-time compile short.
//
// A shared pool (memlab_set_pool, used by memlab.scheduling): several worker processes charge
// their allocations to one counter in a shared-memory block, like tasks sharing one device's
// memory. An allocation that would take the pool past its limit fails with OutOfMemoryError in
// the process that asks, before the memory is taken: exact and atomic (fetch_add on a lock-free
// std::atomic<int64_t>, which is address-free and so works across processes mapping the block:
// [atomics.lockfree], "operations that are lock-free should also be address-free"). Only blocks
// allocated while the pool is set are charged, and each one is released from the pool at its
// free. With no pool set nothing of this runs.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/StorageImpl.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdio>
#include <string>
#include <cstdint>
#include <ctime>
#include <mutex>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace {

struct Event {
  int64_t t_ns;   // CLOCK_MONOTONIC, the clock of Python's time.monotonic_ns()
  int64_t addr;   // block address
  int64_t delta;  // +bytes on allocation, -bytes on free
  int64_t tag;    // whatever the Python side set last (phase and module, packed)
};

std::mutex g_mu;
std::unordered_map<void*, int64_t> g_sizes;  // live blocks -> bytes
std::unordered_set<void*> g_pooled;          // live blocks charged to the shared pool
std::vector<Event> g_events;
int64_t g_live = 0;
int64_t g_peak = 0;
std::atomic<int64_t> g_tag{0};
std::atomic<bool> g_recording{false};
std::atomic<int64_t> g_limit{0};  // 0: none; else live bytes an allocation may not pass
// The shared pool's block: [0] live bytes of every process, [1] their peak, [2] the limit
// (0: none), then one counter per process (its own charged bytes, [3 + slot]). Null: no pool.
static_assert(std::atomic<int64_t>::is_always_lock_free, "the shared pool needs lock-free int64");
// Set and cleared under g_mu (memlab_set_pool); read without it by allocate, hence atomic.
std::atomic<std::atomic<int64_t>*> g_pool{nullptr};
std::atomic<std::atomic<int64_t>*> g_pool_mine{nullptr};
c10::Allocator* g_base = nullptr;
c10::DeleterFnPtr g_base_delete = nullptr;

inline int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

// Caller holds g_mu.
inline void log_locked(void* p, int64_t delta) {
  g_live += delta;
  if (g_live > g_peak) g_peak = g_live;
  if (g_recording.load(std::memory_order_relaxed)) {
    g_events.push_back(Event{now_ns(), reinterpret_cast<int64_t>(p), delta,
                             g_tag.load(std::memory_order_relaxed)});
  }
}

// Take n bytes from the pool: false (nothing taken) if that would pass its limit.
bool pool_take(std::atomic<int64_t>* pool, std::atomic<int64_t>* mine, int64_t n) {
  const int64_t now = pool[0].fetch_add(n) + n;
  const int64_t limit = pool[2].load();
  if (limit > 0 && now > limit) {
    pool[0].fetch_sub(n);
    return false;
  }
  mine->fetch_add(n);
  int64_t peak = pool[1].load();
  while (now > peak && !pool[1].compare_exchange_weak(peak, now)) {
  }
  return true;
}

inline void pool_give(std::atomic<int64_t>* pool, std::atomic<int64_t>* mine, int64_t n) {
  pool[0].fetch_sub(n);
  mine->fetch_sub(n);
}

// Caller holds g_mu (so the pool cannot change meanwhile).
inline void pool_give_locked(int64_t n) { pool_give(g_pool.load(), g_pool_mine.load(), n); }

void tracked_delete(void* p) {
  {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = g_sizes.find(p);
    if (it != g_sizes.end()) {
      log_locked(p, -it->second);
      if (g_pooled.erase(p) > 0) pool_give_locked(it->second);
      g_sizes.erase(it);
    }
  }
  g_base_delete(p);
}

struct RecordingAllocator final : public c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    const int64_t limit = g_limit.load(std::memory_order_relaxed);
    if (limit > 0) {
      int64_t live;
      {
        std::lock_guard<std::mutex> lock(g_mu);
        live = g_live;
      }
      // A simulated device limit: fail the way a full GPU does (torch.OutOfMemoryError), before
      // the memory is taken, so the run stops at the allocation that would not fit. The message
      // is formatted with snprintf, not c10::str: ostream code instantiated in this library
      // crashed on one torch build (2.11, another libstdc++).
      if (live + static_cast<int64_t>(n) > limit) {
        char msg[256];
        std::snprintf(msg, sizeof(msg),
                      "memlab budget exceeded: allocating %zu bytes with %lld bytes live would "
                      "pass the limit of %lld bytes",
                      n, static_cast<long long>(live), static_cast<long long>(limit));
        throw c10::OutOfMemoryError(
            c10::SourceLocation{__func__, __FILE__, static_cast<uint32_t>(__LINE__)},
            std::string(msg));
      }
    }
    // The shared pool, read once: memlab_set_pool changes it under g_mu only between tasks.
    std::atomic<int64_t>* pool = g_pool.load();
    std::atomic<int64_t>* mine = g_pool_mine.load();
    const bool pooled = pool != nullptr && mine != nullptr && n > 0;
    if (pooled && !pool_take(pool, mine, static_cast<int64_t>(n))) {
      char msg[256];
      std::snprintf(msg, sizeof(msg),
                    "memlab shared pool exhausted: allocating %zu bytes would pass the pool's "
                    "limit of %lld bytes (%lld bytes live in all processes)",
                    n, static_cast<long long>(pool[2].load()),
                    static_cast<long long>(pool[0].load()));
      throw c10::OutOfMemoryError(
          c10::SourceLocation{__func__, __FILE__, static_cast<uint32_t>(__LINE__)},
          std::string(msg));
    }
    c10::DataPtr d;
    try {
      d = g_base->allocate(n);
    } catch (...) {
      if (pooled) pool_give(pool, mine, static_cast<int64_t>(n));
      throw;
    }
    void* p = d.get();
    // Only blocks whose context is the address itself (the default CPU allocator's) can be
    // re-labelled without changing their ownership; anything else passes through untouched
    // (and is not charged to the pool: its free would not be seen).
    if (n == 0 || p == nullptr || d.get_context() != p ||
        d.get_deleter() != g_base_delete ||
        !d.compare_exchange_deleter(g_base_delete, &tracked_delete)) {
      if (pooled) pool_give(pool, mine, static_cast<int64_t>(n));
      return d;
    }
    std::lock_guard<std::mutex> lock(g_mu);
    g_sizes[p] = static_cast<int64_t>(n);
    if (pooled) {
      if (g_pool.load() == pool) {
        g_pooled.insert(p);
      } else {  // the pool changed while allocating: give back to the one that was charged
        pool_give(pool, mine, static_cast<int64_t>(n));
      }
    }
    log_locked(p, static_cast<int64_t>(n));
    return d;
  }
  c10::DeleterFnPtr raw_deleter() const override { return &tracked_delete; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    g_base->copy_data(dest, src, count);
  }
};

RecordingAllocator g_alloc;

}  // namespace

extern "C" {

// 1: installed now or before; 0: the CPU allocator is not one we can wrap (no raw deleter).
int memlab_install() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_base != nullptr) return 1;
  c10::Allocator* base = c10::GetCPUAllocator();
  if (base == nullptr || base->raw_deleter() == nullptr) return 0;
  g_base = base;
  g_base_delete = base->raw_deleter();
  // Priority 1 beats the default allocator's 0 (c10/core/Allocator.cpp, SetAllocator).
  c10::SetCPUAllocator(&g_alloc, 1);
  return c10::GetCPUAllocator() == &g_alloc ? 1 : 0;
}

// Start seeing the free of a storage that was allocated before installation.
// Returns 1 if adopted, 0 if already tracked or not a default-CPU block.
int memlab_adopt(int64_t storage_impl, int64_t nbytes) {
  auto* impl = reinterpret_cast<c10::StorageImpl*>(storage_impl);
  if (g_base == nullptr || impl == nullptr || nbytes <= 0) return 0;
  c10::DataPtr& d = impl->_mutable_data_ptr_no_checks();
  void* p = d.get();
  if (p == nullptr || d.get_context() != p) return 0;
  std::lock_guard<std::mutex> lock(g_mu);
  if (!d.compare_exchange_deleter(g_base_delete, &tracked_delete)) return 0;
  g_sizes[p] = nbytes;
  g_live += nbytes;  // adopted bytes were already live: no event, but counted from now on
  if (g_live > g_peak) g_peak = g_live;
  return 1;
}

int64_t memlab_live() {
  std::lock_guard<std::mutex> lock(g_mu);
  return g_live;
}

int64_t memlab_peak() {
  std::lock_guard<std::mutex> lock(g_mu);
  return g_peak;
}

void memlab_reset_peak() {
  std::lock_guard<std::mutex> lock(g_mu);
  g_peak = g_live;
}

// Live-byte limit for new allocations (0 turns it off). See RecordingAllocator::allocate.
void memlab_set_limit(int64_t limit) { g_limit.store(limit); }

// Charge this process's allocations to the shared pool at `pool` (see the top of this file)
// under per-process counter `slot`; 0 detaches (blocks charged so far are released from it).
// The block must stay mapped while set. Returns 1.
int memlab_set_pool(int64_t pool, int64_t slot) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_pool.load() != nullptr) {
    for (void* p : g_pooled) {
      auto it = g_sizes.find(p);
      if (it != g_sizes.end()) pool_give_locked(it->second);
    }
  }
  g_pooled.clear();
  auto* a = reinterpret_cast<std::atomic<int64_t>*>(pool);
  g_pool_mine.store(a != nullptr ? a + 3 + slot : nullptr);
  g_pool.store(a);
  return 1;
}

// Add delta to the pool's live bytes and to counter `slot` (a replacement process gives back
// what a dead one held). The pool need not be set in this process.
void memlab_pool_add(int64_t pool, int64_t slot, int64_t delta) {
  auto* a = reinterpret_cast<std::atomic<int64_t>*>(pool);
  a[0].fetch_add(delta);
  a[3 + slot].fetch_add(delta);
}

void memlab_set_tag(int64_t tag) { g_tag.store(tag, std::memory_order_relaxed); }

void memlab_set_recording(int on) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_recording.store(on != 0);
}

int64_t memlab_event_count() {
  std::lock_guard<std::mutex> lock(g_mu);
  return static_cast<int64_t>(g_events.size());
}

// Copy events [start, start + n) into out (4 int64 per event); returns how many were copied.
int64_t memlab_copy_events(int64_t* out, int64_t start, int64_t n) {
  std::lock_guard<std::mutex> lock(g_mu);
  int64_t total = static_cast<int64_t>(g_events.size());
  if (start < 0 || start >= total || n <= 0) return 0;
  if (start + n > total) n = total - start;
  for (int64_t i = 0; i < n; ++i) {
    const Event& e = g_events[start + i];
    out[4 * i] = e.t_ns;
    out[4 * i + 1] = e.addr;
    out[4 * i + 2] = e.delta;
    out[4 * i + 3] = e.tag;
  }
  return n;
}

void memlab_clear_events() {
  std::lock_guard<std::mutex> lock(g_mu);
  g_events.clear();
  g_events.shrink_to_fit();
}

}  // extern "C"
