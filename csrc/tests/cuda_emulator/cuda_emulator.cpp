// The CUDA emulator's runtime (the model is described in cuda_emulator.h): the block scheduler with its
// barriers and shuffles, shared memory, launch checks and the emulated device's settings.
#include "cuda_emulator.h"

#include <link.h>
#include <sys/mman.h>
#include <unistd.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#include <exception>
#include <map>
#include <mutex>
#include <new>
#include <sstream>
#include <thread>
#include <vector>

uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

namespace vaefast {
namespace emulator {
namespace {

// ---- Context switches ------------------------------------------------------------------------------------
// A fiber switch on x86-64 saves the callee-saved registers and the floating-point control words on the
// old stack and pops them from the new one: ~10 ns. glibc's swapcontext also saves the signal mask with a
// system call each time, ~750 ns per switch here, which made one warp reduction of 160 switches cost
// 0.1 ms and the test run minutes. Elsewhere, ucontext. Under AddressSanitizer every switch is announced
// (__sanitizer_*_switch_fiber), so that it tracks which stack is live.
struct StackBounds {
  const void* bottom = nullptr;  // the scheduler's are learnt when a fiber first starts
  size_t size = 0;
  void* fake_stack = nullptr;  // AddressSanitizer's per-context state
};
#if defined(__x86_64__)
struct Context {
  void* stack_pointer = nullptr;
  StackBounds stack;
};
extern "C" void vaefast_emulator_switch(void** save, void* load);
asm(R"(
  .text
  .globl vaefast_emulator_switch
  .type vaefast_emulator_switch, @function
vaefast_emulator_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size vaefast_emulator_switch, .-vaefast_emulator_switch
  .section .note.GNU-stack, "", @progbits
  .text
)");
void raw_switch(Context& from, Context& to) { vaefast_emulator_switch(&from.stack_pointer, to.stack_pointer); }
// A fresh context that starts entry() on the stack [stack, stack + bytes): the frame switch_context pops
// (six zero registers, MXCSR 0x1f80 and x87 control word 0x037f: the defaults), entry's address for its
// `ret`, and a zero return address above it, so that entry starts with the stack alignment of a call.
void make_context(Context& context, char* stack, size_t bytes, void (*entry)()) {
  auto* top = reinterpret_cast<uint64_t*>(reinterpret_cast<uintptr_t>(stack + bytes) & ~uintptr_t{15});
  *--top = 0;
  *--top = reinterpret_cast<uint64_t>(entry);
  for (int k = 0; k < 6; ++k) *--top = 0;
  *--top = uint64_t{0x037f} << 32 | 0x1f80;
  context.stack_pointer = top;
  context.stack = {stack, bytes, nullptr};
}
#else
struct Context {
  ucontext_t context;
  StackBounds stack;
};
void raw_switch(Context& from, Context& to) { swapcontext(&from.context, &to.context); }
void make_context(Context& context, char* stack, size_t bytes, void (*entry)()) {
  context.stack = {stack, bytes, nullptr};
  getcontext(&context.context);
  context.context.uc_stack.ss_sp = stack;
  context.context.uc_stack.ss_size = bytes;
  context.context.uc_link = nullptr;
  makecontext(&context.context, entry, 0);
}
#endif

void switch_context(Context& from, Context& to) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(&from.stack.fake_stack, to.stack.bottom, to.stack.size);
  raw_switch(from, to);
  __sanitizer_finish_switch_fiber(from.stack.fake_stack, nullptr, nullptr);
#else
  raw_switch(from, to);
#endif
}

// A stack about to be reused: the frames of the fibers that left it (they never return) are still
// poisoned for AddressSanitizer.
void reuse_stack(char* stack, size_t bytes) {
#if defined(__SANITIZE_ADDRESS__)
  __asan_unpoison_memory_region(stack, bytes);
#else
  (void)stack;
  (void)bytes;
#endif
}

// Called first thing on a fiber: completes the switch that started it, and learns the scheduler's stack.
void fiber_started(Context& scheduler) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(nullptr, &scheduler.stack.bottom, &scheduler.stack.size);
#else
  (void)scheduler;
#endif
}

// A fiber's stack: kernels keep a few hundred bytes of registers' worth of locals; 256 KB leaves room
// for the sanitizers' larger frames. Only the touched pages are ever committed.
constexpr size_t kStackBytes = 256 * 1024;

enum class State { kRunnable, kAtSync, kAtShuffle, kExited };

struct Fiber {
  Context context;
  State state = State::kRunnable;
  const char* file = "";  // where it waits
  int line = 0;
  unsigned int mask = 0;  // shuffle: the lanes named, the lane mask, the value in and out
  int lane_mask = 0;
  size_t size = 0;
  unsigned char value[8] = {};
  unsigned char result[8] = {};
};

struct Device {
  int sms = 132;
  Schedule order = Schedule::kForward;
  std::map<const void*, size_t> max_dynamic_shared;  // cudaFuncSetAttribute's opt-ins, per kernel
  std::mutex launch_mutex;                          // one launch at a time: the block state is global
};
Device& device() {
  static Device instance;
  return instance;
}

// The block being run (on the worker thread) and its fibers.
struct Block {
  std::vector<Fiber> fibers;
  Context scheduler;
  int current = 0;
  unsigned char* dynamic_shared = nullptr;
  void (*body)(void*) = nullptr;
  void* closure = nullptr;
  std::string error;  // set by a fiber that hit an error; the scheduler throws it
};
Block* running = nullptr;

// Stacks, each above a guard page (an overflow faults instead of corrupting a neighbour), reused by every
// launch.
std::vector<char*>& stacks() {
  static std::vector<char*> pool;
  return pool;
}
char* stack_for(size_t index) {
  std::vector<char*>& pool = stacks();
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  while (pool.size() <= index) {
    void* memory = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) throw Error("cannot map a fiber stack");
    mprotect(memory, page, PROT_NONE);
    pool.push_back(static_cast<char*>(memory) + page);
  }
  return pool[index];
}

std::string site(const char* file, int line) {
  std::ostringstream out;
  out << file << ":" << line;
  return out.str();
}

std::string describe_block() {
  std::ostringstream out;
  out << "block (" << blockIdx.x << ", " << blockIdx.y << ", " << blockIdx.z << ")";
  return out.str();
}

// Where a fiber waits, in words.
std::string describe_wait(const Fiber& fiber) {
  switch (fiber.state) {
    case State::kAtSync:
      return "__syncthreads at " + site(fiber.file, fiber.line);
    case State::kAtShuffle:
      return "__shfl_xor_sync at " + site(fiber.file, fiber.line);
    case State::kExited:
      return "exited";
    case State::kRunnable:
      break;
  }
  return "running";
}

bool same_site(const Fiber& a, const Fiber& b) {
  return a.state == b.state && a.line == b.line && (a.file == b.file || std::strcmp(a.file, b.file) == 0);
}

void set_thread_index(int linear) {
  const unsigned int index = static_cast<unsigned int>(linear);
  threadIdx = {index % blockDim.x, index / blockDim.x % blockDim.y, index / (blockDim.x * blockDim.y)};
}

// Parks the calling fiber in `state` at file:line and returns to the scheduler; returns when resumed.
void wait_here(State state, const char* file, int line) {
  Fiber& fiber = running->fibers[running->current];
  fiber.state = state;
  fiber.file = file;
  fiber.line = line;
  switch_context(fiber.context, running->scheduler);
}

void fiber_main() {
  fiber_started(running->scheduler);
  try {
    running->body(running->closure);
  } catch (const std::exception& error) {
    running->error = std::string("exception in a kernel thread: ") + error.what();
  }
  Fiber& fiber = running->fibers[running->current];
  fiber.state = State::kExited;
  switch_context(fiber.context, running->scheduler);  // never resumed
}

[[noreturn]] void fail(const std::string& message) { throw Error(describe_block() + ": " + message); }

// Completes every shuffle whose named lanes have all arrived; returns whether any did. A shuffle that can
// never complete (a named lane exited, or waits at another barrier) is divergence: reported.
bool complete_shuffles(Block& block) {
  bool progressed = false;
  const int threads = static_cast<int>(block.fibers.size());
  for (int first = 0; first < threads; first += warpSize) {
    Fiber* warp = &block.fibers[first];
    const int lanes = std::min(warpSize, threads - first);
    for (int lane = 0; lane < lanes; ++lane) {
      const Fiber& fiber = warp[lane];
      if (fiber.state != State::kAtShuffle) continue;
      const auto where = [&] {
        return "thread " + std::to_string(first + lane) + "'s __shfl_xor_sync at " + site(fiber.file, fiber.line);
      };
      if ((fiber.mask >> lane & 1u) == 0) fail(where() + ": its own lane is not in the mask");
      for (int named = 0; named < warpSize; ++named) {
        if ((fiber.mask >> named & 1u) == 0) continue;
        if (named >= lanes) fail(where() + " names lane " + std::to_string(named) + ", which the block lacks");
        const Fiber& other = warp[named];
        if (!same_site(other, fiber) || other.mask != fiber.mask || other.size != fiber.size) {
          fail("divergence: " + where() + " names thread " + std::to_string(first + named) + ", which is " +
               describe_wait(other) + (other.state == State::kAtShuffle && same_site(other, fiber)
                                           ? " with another mask or value size"
                                           : ""));
        }
      }
    }
    // Every waiting lane's group is complete: exchange.
    for (int lane = 0; lane < lanes; ++lane) {
      Fiber& fiber = warp[lane];
      if (fiber.state != State::kAtShuffle) continue;
      const int source = lane ^ fiber.lane_mask;
      if (source < 0 || source >= warpSize || (fiber.mask >> source & 1u) == 0) {
        fail("thread " + std::to_string(first + lane) + "'s __shfl_xor_sync at " + site(fiber.file, fiber.line) +
             " reads lane " + std::to_string(source) + ", which its mask does not name");
      }
      std::memcpy(fiber.result, warp[source].value, fiber.size);
    }
    for (int lane = 0; lane < lanes; ++lane) {
      if (warp[lane].state != State::kAtShuffle) continue;
      warp[lane].state = State::kRunnable;
      progressed = true;
    }
  }
  return progressed;
}

// Releases a __syncthreads at which every live thread waits; anything else that cannot progress is
// reported. Returns false when every thread has exited.
bool release_barrier(Block& block) {
  const Fiber* waiting = nullptr;
  for (const Fiber& fiber : block.fibers) {
    if (fiber.state == State::kExited) continue;
    if (waiting == nullptr) waiting = &fiber;
    if (fiber.state != State::kAtSync || !same_site(fiber, *waiting)) {
      std::ostringstream out;
      out << "divergence: threads wait at different barriers:";
      const Fiber* shown[4] = {};
      int count = 0;
      for (size_t t = 0; t < block.fibers.size() && count < 4; ++t) {
        const Fiber& candidate = block.fibers[t];
        if (candidate.state == State::kExited) continue;
        bool seen = false;
        for (int k = 0; k < count; ++k) seen = seen || same_site(*shown[k], candidate);
        if (seen) continue;
        shown[count++] = &candidate;
        out << " thread " << t << " at " << describe_wait(candidate) << ";";
      }
      fail(out.str());
    }
  }
  if (waiting == nullptr) return false;
  for (Fiber& fiber : block.fibers) {
    if (fiber.state == State::kAtSync) fiber.state = State::kRunnable;
  }
  return true;
}

// This module's thread-local block on the calling thread: where the __shared__ variables (static
// thread_local) of the kernels linked into it live.
struct TlsBlock {
  unsigned char* data = nullptr;
  size_t size = 0;
};
TlsBlock module_tls() {
  TlsBlock found;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* out) {
        const auto here = reinterpret_cast<uintptr_t>(&module_tls);
        bool contains = false;
        const ElfW(Phdr)* tls = nullptr;
        for (int k = 0; k < info->dlpi_phnum; ++k) {
          const ElfW(Phdr)& header = info->dlpi_phdr[k];
          const uintptr_t start = info->dlpi_addr + header.p_vaddr;
          if (header.p_type == PT_LOAD && here >= start && here < start + header.p_memsz) contains = true;
          if (header.p_type == PT_TLS) tls = &header;
        }
        if (!contains) return 0;
        if (tls != nullptr) {
          *static_cast<TlsBlock*>(out) = {static_cast<unsigned char*>(info->dlpi_tls_data), tls->p_memsz};
        }
        return 1;
      },
      &found);
  return found;
}

void run_block(Block& block, int threads, const TlsBlock& shared, size_t dynamic_bytes) {
  if (shared.data != nullptr) std::memset(shared.data, 0xff, shared.size);
  std::memset(block.dynamic_shared, 0xff, dynamic_bytes);
  block.fibers.assign(static_cast<size_t>(threads), Fiber{});
  for (int t = 0; t < threads; ++t) {
    char* stack = stack_for(static_cast<size_t>(t));
    reuse_stack(stack, kStackBytes);
    make_context(block.fibers[t].context, stack, kStackBytes, fiber_main);
  }
  const bool reversed = device().order == Schedule::kReversed;
  do {
    do {
      for (int k = 0; k < threads; ++k) {
        const int t = reversed ? threads - 1 - k : k;
        if (block.fibers[t].state != State::kRunnable) continue;
        block.current = t;
        set_thread_index(t);
        switch_context(block.scheduler, block.fibers[t].context);
        if (!block.error.empty()) fail("thread " + std::to_string(t) + ": " + block.error);
      }
    } while (complete_shuffles(block));
  } while (release_barrier(block));
}

void check_launch(const LaunchShape& shape) {
  const dim3& g = shape.grid;
  const dim3& b = shape.block;
  const uint64_t threads = uint64_t{b.x} * b.y * b.z;
  std::ostringstream problem;
  if (b.x == 0 || b.y == 0 || b.z == 0 || b.x > 1024 || b.y > 1024 || b.z > 64 || threads > kMaxThreadsPerBlock) {
    problem << "block (" << b.x << ", " << b.y << ", " << b.z << ") outside the limits (at most 1024 threads)";
  } else if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 2147483647u || g.y > 65535 || g.z > 65535) {
    problem << "grid (" << g.x << ", " << g.y << ", " << g.z << ") outside the limits (x < 2^31, y and z <= 65535)";
  } else {
    const auto opted = device().max_dynamic_shared.find(shape.kernel);
    const size_t limit = opted == device().max_dynamic_shared.end() ? kDefaultDynamicSharedBytes : opted->second;
    if (shape.dynamic_shared_bytes > limit) {
      problem << "dynamic shared memory of " << shape.dynamic_shared_bytes << " B exceeds the kernel's limit of "
              << limit << " B"
              << (opted == device().max_dynamic_shared.end()
                      ? " (48 KB unless cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize) raises it)"
                      : "");
    }
  }
  if (!problem.str().empty()) throw Error("launch refused: " + problem.str());
}

}  // namespace

void set_sm_count(int sms) {
  if (sms < 1) throw Error("the SM count must be positive");
  device().sms = sms;
}
int sm_count() { return device().sms; }
void set_schedule(Schedule order) { device().order = order; }
Schedule schedule() { return device().order; }

cudaError_t set_max_dynamic_shared(const void* kernel, int bytes) {
  if (bytes < 0 || static_cast<size_t>(bytes) > kMaxDynamicSharedBytes) return cudaErrorInvalidValue;
  device().max_dynamic_shared[kernel] = static_cast<size_t>(bytes);
  return cudaSuccess;
}

void sync_threads(const char* file, int line) {
  if (running == nullptr) throw Error(site(file, line) + ": __syncthreads outside a kernel");
  wait_here(State::kAtSync, file, line);
}

void exchange_xor(const char* file, int line, unsigned int mask, const void* value, size_t size, int lane_mask,
                  void* out) {
  if (running == nullptr) throw Error(site(file, line) + ": __shfl_xor_sync outside a kernel");
  Fiber& fiber = running->fibers[running->current];
  fiber.mask = mask;
  fiber.lane_mask = lane_mask;
  fiber.size = size;
  std::memcpy(fiber.value, value, size);
  wait_here(State::kAtShuffle, file, line);
  std::memcpy(out, fiber.result, size);
}

unsigned char* dynamic_shared_memory() {
  if (running == nullptr) throw Error("dynamic shared memory outside a kernel");
  return running->dynamic_shared;
}

void run_grid(const LaunchShape& shape, void (*body)(void*), void* closure) {
  const std::lock_guard<std::mutex> lock(device().launch_mutex);
  check_launch(shape);
  std::exception_ptr failure;
  // The blocks run on a fresh thread: its copy of the module's thread-local block holds the kernels'
  // __shared__ variables, refilled before every block without touching the caller's thread-locals.
  std::thread worker([&] {
    Block block;
    block.body = body;
    block.closure = closure;
    // Exactly the launch's bytes, so that a sanitizer build sees a read past them.
    const size_t dynamic_bytes = shape.dynamic_shared_bytes;
    block.dynamic_shared =
        static_cast<unsigned char*>(::operator new(dynamic_bytes == 0 ? 1 : dynamic_bytes, std::align_val_t{16}));
    running = &block;
    gridDim = shape.grid;
    blockDim = shape.block;
    const int threads = static_cast<int>(shape.block.x * shape.block.y * shape.block.z);
    try {
      const TlsBlock shared = module_tls();
      for (unsigned int z = 0; z < shape.grid.z; ++z) {
        for (unsigned int y = 0; y < shape.grid.y; ++y) {
          for (unsigned int x = 0; x < shape.grid.x; ++x) {
            blockIdx = {x, y, z};
            run_block(block, threads, shared, dynamic_bytes);
          }
        }
      }
    } catch (...) {
      failure = std::current_exception();
    }
    running = nullptr;
    ::operator delete(block.dynamic_shared, std::align_val_t{16});
  });
  worker.join();
  if (failure) std::rethrow_exception(failure);
}

}  // namespace emulator
}  // namespace vaefast

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device) {
  if (device != 0) return cudaErrorInvalidValue;
  switch (attribute) {
    case cudaDevAttrMultiProcessorCount:
      *value = vaefast::emulator::sm_count();
      return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock:
      *value = vaefast::emulator::kMaxThreadsPerBlock;
      return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
