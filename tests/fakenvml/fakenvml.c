/*
 * A fake libnvidia-ml.so.1 for tests: the real pynvml loads it and calls it exactly as it would
 * call NVIDIA's library. The GPUs come from the JSON file named by $FAKE_NVML_CONFIG, re-read
 * whenever that file is replaced (so a test can change live readings between calls).
 *
 * Self-contained on purpose (no headers of our own, no -D needed): tests/fakehost compiles this
 * file as a fake driver host's libnvidia-ml.so.<version>.
 *
 * The driver version is a property of the library file, as with NVIDIA's: -DFAKE_DRIVER_VERSION=
 * "580.159.04" compiles it in (build_fake_nvml(version=...)); a build without it reports the
 * version in the name of the file it was loaded from (libnvidia-ml.so.<version>, through any
 * links), which is what tests/fakehost's copies are. The config's "driver_version" wins over both.
 *
 * Conventions of the config (schema in tests/fakenvml/build.py):
 *   - a missing key or null reads as NVML_ERROR_NOT_SUPPORTED;
 *   - a string that names an NVML error ("NOT_SUPPORTED", "GPU_IS_LOST", ...) makes the call
 *     return that error;
 *   - "missing_functions": [names] makes those entry points answer NVML_ERROR_FUNCTION_NOT_FOUND;
 *     building with -DOMIT_<function> removes the symbol itself (an older driver);
 *   - "lost": true on a GPU makes every call on it, its handle and its MIG devices answer
 *     NVML_ERROR_GPU_IS_LOST;
 *   - events are lines appended to the config's "events_file" while the process runs (see the
 *     events section below).
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

typedef int nvmlReturn_t;
#define OK 0
#define E_UNINITIALIZED 1
#define E_INVALID_ARGUMENT 2
#define E_NOT_SUPPORTED 3
#define E_NOT_FOUND 6
#define E_INSUFFICIENT_SIZE 7
#define E_DRIVER_NOT_LOADED 9
#define E_TIMEOUT 10
#define E_FUNCTION_NOT_FOUND 13
#define E_GPU_IS_LOST 15
#define E_MEMORY 20
#define E_ARGUMENT_VERSION_MISMATCH 25
#define E_UNKNOWN 999
#define MAX_GPUS 64
/* A helper only of entry points that -DOMIT_<function> can remove (variant builds stay -Werror). */
#define OMITTABLE __attribute__((unused))
#define MAX_MIG 8

static const struct { const char *name; int code; const char *text; } ERRORS[] = {
    {"SUCCESS", 0, "Success"}, {"UNINITIALIZED", 1, "Uninitialized"},
    {"INVALID_ARGUMENT", 2, "Invalid Argument"}, {"NOT_SUPPORTED", 3, "Not Supported"},
    {"NO_PERMISSION", 4, "Insufficient Permissions"},
    {"ALREADY_INITIALIZED", 5, "Already Initialized"}, {"NOT_FOUND", 6, "Not Found"},
    {"INSUFFICIENT_SIZE", 7, "Insufficient Size"}, {"INSUFFICIENT_POWER", 8, "Insufficient Power"},
    {"DRIVER_NOT_LOADED", 9, "Driver Not Loaded"}, {"TIMEOUT", 10, "Timeout"},
    {"IRQ_ISSUE", 11, "Interrupt Request Issue"},
    {"LIBRARY_NOT_FOUND", 12, "NVML Shared Library Not Found"},
    {"FUNCTION_NOT_FOUND", 13, "Function Not Found"},
    {"CORRUPTED_INFOROM", 14, "Corrupted infoROM"}, {"GPU_IS_LOST", 15, "GPU is lost"},
    {"RESET_REQUIRED", 16, "GPU requires restart"},
    {"OPERATING_SYSTEM", 17, "The operating system has blocked the request."},
    {"LIB_RM_VERSION_MISMATCH", 18, "RM has detected an NVML/RM version mismatch."},
    {"IN_USE", 19, "In use"}, {"MEMORY", 20, "Insufficient Memory"}, {"NO_DATA", 21, "No data"},
    {"ARGUMENT_VERSION_MISMATCH", 25, "Argument version mismatch"},
    {"UNKNOWN", 999, "Unknown Error"},
};

/* ---- a small JSON reader ------------------------------------------------------------------ */
enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };
typedef struct jv {
    int type, n;
    double num;
    char *str;
    char **keys;
    struct jv **items;
} jv;

static void jfree(jv *v) {
    if (!v) return;
    for (int i = 0; i < v->n; i++) {
        jfree(v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items); free(v->keys); free(v->str); free(v);
}

static void skip_ws(const char **p) { while (**p && isspace((unsigned char)**p)) (*p)++; }

static char *parse_string(const char **p) {
    size_t cap = 16, len = 0;
    char *out = malloc(cap);
    (*p)++;
    while (**p && **p != '"') {
        char c = *(*p)++;
        if (c == '\\') {
            c = *(*p)++;
            switch (c) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u': { /* keep ASCII, replace the rest */
                unsigned code = 0;
                for (int i = 0; i < 4 && **p; i++) {
                    char h = *(*p)++;
                    code = code * 16 + (unsigned)(isdigit((unsigned char)h) ? h - '0' : (tolower(h) - 'a' + 10));
                }
                c = code < 128 ? (char)code : '?';
                break;
            }
            default: break;
            }
        }
        if (len + 2 > cap) out = realloc(out, cap *= 2);
        out[len++] = c;
    }
    if (**p != '"') { free(out); return NULL; }
    (*p)++;
    out[len] = 0;
    return out;
}

static jv *parse_value(const char **p);

static int push(jv *v, char *key, jv *item) {
    v->items = realloc(v->items, sizeof(jv *) * (size_t)(v->n + 1));
    if (v->type == J_OBJ) { v->keys = realloc(v->keys, sizeof(char *) * (size_t)(v->n + 1)); v->keys[v->n] = key; }
    v->items[v->n++] = item;
    return 1;
}

static jv *parse_container(const char **p, int type) {
    jv *v = calloc(1, sizeof(jv));
    v->type = type;
    char close = type == J_ARR ? ']' : '}';
    (*p)++;
    skip_ws(p);
    if (**p == close) { (*p)++; return v; }
    for (;;) {
        char *key = NULL;
        skip_ws(p);
        if (type == J_OBJ) {
            if (**p != '"' || !(key = parse_string(p))) goto fail;
            skip_ws(p);
            if (*(*p)++ != ':') { free(key); goto fail; }
        }
        jv *item = parse_value(p);
        if (!item) { free(key); goto fail; }
        push(v, key, item);
        skip_ws(p);
        if (**p == ',') { (*p)++; continue; }
        if (**p == close) { (*p)++; return v; }
        goto fail;
    }
fail:
    jfree(v);
    return NULL;
}

static jv *parse_value(const char **p) {
    skip_ws(p);
    jv *v;
    if (**p == '{') return parse_container(p, J_OBJ);
    if (**p == '[') return parse_container(p, J_ARR);
    v = calloc(1, sizeof(jv));
    if (**p == '"') {
        v->type = J_STR;
        if (!(v->str = parse_string(p))) { free(v); return NULL; }
    } else if (!strncmp(*p, "true", 4) || !strncmp(*p, "false", 5)) {
        v->type = J_BOOL;
        v->num = **p == 't';
        *p += v->num ? 4 : 5;
    } else if (!strncmp(*p, "null", 4)) {
        v->type = J_NULL;
        *p += 4;
    } else {
        char *end;
        v->type = J_NUM;
        v->num = strtod(*p, &end);
        if (end == *p) { free(v); return NULL; }
        *p = end;
    }
    return v;
}

static jv *jget(const jv *o, const char *key) {
    if (!o || o->type != J_OBJ) return NULL;
    for (int i = 0; i < o->n; i++)
        if (!strcmp(o->keys[i], key)) return o->items[i];
    return NULL;
}

static jv *jat(const jv *a, int i) { return a && a->type == J_ARR && i >= 0 && i < a->n ? a->items[i] : NULL; }

/* ---- config state ------------------------------------------------------------------------- */
typedef struct nvmlDevice_st { int gpu, mig; } *nvmlDevice_t;
static struct nvmlDevice_st gpu_handles[MAX_GPUS], mig_handles[MAX_GPUS][MAX_MIG];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static jv *cfg;
static struct stat cfg_stat;
static int initialized;
static unsigned long long pcie_calls;
static long long call_delay_us; /* "call_delay_ms": every entry point sleeps this long first */
/* fakeNvmlWatchThread: entry points called on that thread (an event loop's) are counted. */
static long watched_tid;
static unsigned long long watched_calls;

static void sleep_ms(double ms) {
    if (ms <= 0) return;
    struct timespec ts = {(time_t)(ms / 1000), (long)((long long)(ms * 1e6) % 1000000000LL)};
    nanosleep(&ts, NULL);
}

static int error_code(const char *name) {
    for (size_t i = 0; i < sizeof ERRORS / sizeof *ERRORS; i++)
        if (!strcmp(ERRORS[i].name, name)) return ERRORS[i].code;
    return -1;
}

/* Re-read the config when the file was replaced or changed; called with `mu` held. */
static int reload(void) {
    const char *path = getenv("FAKE_NVML_CONFIG");
    struct stat st;
    if (!path || stat(path, &st) != 0) {
        if (path) fprintf(stderr, "fakenvml: cannot stat FAKE_NVML_CONFIG=%s\n", path);
        return E_DRIVER_NOT_LOADED;
    }
    if (cfg && st.st_ino == cfg_stat.st_ino && st.st_size == cfg_stat.st_size &&
        st.st_mtim.tv_sec == cfg_stat.st_mtim.tv_sec && st.st_mtim.tv_nsec == cfg_stat.st_mtim.tv_nsec)
        return OK;
    FILE *f = fopen(path, "rb");
    if (!f) return E_DRIVER_NOT_LOADED;
    char *text = calloc(1, (size_t)st.st_size + 1);
    size_t got = fread(text, 1, (size_t)st.st_size, f);
    fclose(f);
    text[got] = 0;
    const char *p = text;
    jv *parsed = parse_value(&p);
    free(text);
    if (!parsed || parsed->type != J_OBJ) {
        fprintf(stderr, "fakenvml: %s is not a JSON object\n", path);
        jfree(parsed);
        return E_UNKNOWN;
    }
    jfree(cfg);
    cfg = parsed;
    cfg_stat = st;
    jv *delay = jget(cfg, "call_delay_ms");
    __atomic_store_n(&call_delay_us, delay && delay->type == J_NUM ? (long long)(delay->num * 1000) : 0,
                     __ATOMIC_RELAXED);
    return OK;
}

static int function_missing(const char *fn) {
    jv *missing = jget(cfg, "missing_functions");
    for (int i = 0; missing && i < missing->n; i++)
        if (missing->items[i]->type == J_STR && !strcmp(missing->items[i]->str, fn)) return 1;
    return 0;
}

/* Every entry point starts here: takes the lock, refreshes the config, applies "missing". */
static int enter(const char *fn, int need_init) {
    long watched = __atomic_load_n(&watched_tid, __ATOMIC_SEQ_CST);
    if (watched && syscall(SYS_gettid) == watched) __atomic_add_fetch(&watched_calls, 1, __ATOMIC_SEQ_CST);
    sleep_ms((double)__atomic_load_n(&call_delay_us, __ATOMIC_RELAXED) / 1000.0);
    pthread_mutex_lock(&mu);
    int rc = reload();
    if (rc == OK && function_missing(fn)) rc = E_FUNCTION_NOT_FOUND;
    if (rc == OK && need_init && !initialized) rc = E_UNINITIALIZED;
    if (rc != OK) pthread_mutex_unlock(&mu);
    return rc;
}
#define ENTER(need_init) do { int rc_ = enter(__func__, need_init); if (rc_) return rc_; } while (0)
#define LEAVE(rc) do { int r_ = (rc); pthread_mutex_unlock(&mu); return r_; } while (0)

static int gpu_count(void) {
    jv *gpus = jget(cfg, "gpus");
    return gpus && gpus->type == J_ARR ? (gpus->n < MAX_GPUS ? gpus->n : MAX_GPUS) : 0;
}

/* "lost": true on a GPU: it fell off the bus; every call on it (and its MIG devices) fails. */
static int lost(nvmlDevice_t d) {
    if (!d || d->gpu < 0 || d->gpu >= gpu_count()) return 0;
    jv *v = jget(jat(jget(cfg, "gpus"), d->gpu), "lost");
    return v && v->type == J_BOOL && v->num;
}
#define ENTER_DEV(d) do { ENTER(1); if (lost(d)) LEAVE(E_GPU_IS_LOST); } while (0)

static jv *device(nvmlDevice_t d) {
    if (!d || d->gpu < 0 || d->gpu >= gpu_count()) return NULL;
    jv *gpu = jat(jget(cfg, "gpus"), d->gpu);
    return d->mig < 0 ? gpu : jat(jget(gpu, "mig_devices"), d->mig);
}

/* The value of `key` on device `d` as a number, or the NVML error the config asks for. */
static int value_of(jv *v, double *out) {
    if (!v || v->type == J_NULL) return E_NOT_SUPPORTED;
    if (v->type == J_STR) return error_code(v->str) < 0 ? E_UNKNOWN : error_code(v->str);
    if (v->type != J_NUM && v->type != J_BOOL) return E_UNKNOWN;
    *out = v->num;
    return OK;
}

/* What a value that should be an object or array answers: its error name's error, NOT_SUPPORTED
 * when missing or null, UNKNOWN for a number or anything else. */
static int shape_error(jv *v) {
    double unused;
    int rc = value_of(v, &unused);
    return rc == OK ? E_UNKNOWN : rc;
}

static int dev_num(nvmlDevice_t d, const char *key, double *out) {
    jv *dev = device(d);
    if (!dev) return E_INVALID_ARGUMENT;
    return value_of(jget(dev, key), out);
}

static int dev_str(nvmlDevice_t d, const char *key, char *buf, unsigned len) {
    jv *dev = device(d);
    if (!dev) return E_INVALID_ARGUMENT;
    jv *v = jget(dev, key);
    if (!v || v->type == J_NULL) return E_NOT_SUPPORTED;
    if (v->type != J_STR) return E_UNKNOWN;
    if (error_code(v->str) < 0) {
        if (strlen(v->str) + 1 > len) return E_INSUFFICIENT_SIZE;
        strcpy(buf, v->str);
        return OK;
    }
    return error_code(v->str);
}

#define UINT_GETTER(name, key)                                          \
    nvmlReturn_t name(nvmlDevice_t d, unsigned *out) {                  \
        ENTER_DEV(d);                                                   \
        double v = 0;                                                   \
        int rc = dev_num(d, key, &v);                                   \
        if (rc == OK) *out = (unsigned)v;                               \
        LEAVE(rc);                                                      \
    }

static int copy_out(const char *s, char *buf, unsigned len) {
    if (strlen(s) + 1 > len) return E_INSUFFICIENT_SIZE;
    strcpy(buf, s);
    return OK;
}

/* ---- library lifecycle -------------------------------------------------------------------- */
nvmlReturn_t nvmlInitWithFlags(unsigned flags) {
    (void)flags;
    ENTER(0);
    double init_delay_ms = 0; /* a real driver's init takes 100s of ms on a big host */
    if (value_of(jget(cfg, "init_delay_ms"), &init_delay_ms) == OK) sleep_ms(init_delay_ms);
    jv *err = jget(cfg, "init_error");
    if (err && err->type == J_STR) LEAVE(error_code(err->str) < 0 ? E_UNKNOWN : error_code(err->str));
    for (int i = 0; i < MAX_GPUS; i++) {
        gpu_handles[i].gpu = i; gpu_handles[i].mig = -1;
        for (int m = 0; m < MAX_MIG; m++) { mig_handles[i][m].gpu = i; mig_handles[i][m].mig = m; }
    }
    initialized++;
    LEAVE(OK);
}
nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    ENTER(1);
    initialized--;
    LEAVE(OK);
}

const char *nvmlErrorString(nvmlReturn_t result) {
    for (size_t i = 0; i < sizeof ERRORS / sizeof *ERRORS; i++)
        if (ERRORS[i].code == result) return ERRORS[i].text;
    return "Unknown Error";
}

/* Test-only entry points, reached through the same handle pynvml uses. */
unsigned long long fakeNvmlPcieCalls(void) { return __atomic_load_n(&pcie_calls, __ATOMIC_SEQ_CST); }
/* Count the calls made on thread `tid` (Linux thread id; 0 stops watching) from now on. */
void fakeNvmlWatchThread(long tid) {
    __atomic_store_n(&watched_calls, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&watched_tid, tid, __ATOMIC_SEQ_CST);
}
unsigned long long fakeNvmlWatchedThreadCalls(void) { return __atomic_load_n(&watched_calls, __ATOMIC_SEQ_CST); }
static void anchor(void) {}
/* A static anchor: an exported symbol's address could be interposed by another loaded copy. */
const char *fakeNvmlLibraryPath(void) {
    Dl_info info;
    return dladdr((void *)anchor, &info) ? info.dli_fname : "";
}

/* ---- system ------------------------------------------------------------------------------- */
#ifdef FAKE_DRIVER_VERSION
static const char BUILT_VERSION[] = FAKE_DRIVER_VERSION;
#else
static const char BUILT_VERSION[] = "";
#endif

/* "580.159.04" from ".../libnvidia-ml.so.580.159.04"; "" for libnvidia-ml.so.1 itself. */
static void version_from_file_name(char *out, size_t len) {
    Dl_info info;
    char real[4096];
    static const char PREFIX[] = "libnvidia-ml.so.";
    out[0] = 0;
    if (!dladdr((void *)anchor, &info) || !info.dli_fname || !realpath(info.dli_fname, real)) return;
    const char *base = strrchr(real, '/');
    base = base ? base + 1 : real;
    if (strncmp(base, PREFIX, sizeof PREFIX - 1)) return;
    const char *v = base + sizeof PREFIX - 1;
    if (!strchr(v, '.') || strspn(v, "0123456789.") != strlen(v) || strlen(v) >= len) return;
    memcpy(out, v, strlen(v) + 1);
}

/* The config's "driver_version" (an error name makes the call fail), else the library's own. */
static int driver_version(char *out, size_t len) {
    jv *v = jget(cfg, "driver_version");
    if (v && v->type == J_STR) {
        if (error_code(v->str) >= 0) return error_code(v->str);
        snprintf(out, len, "%s", v->str);
        return OK;
    }
    if (v && v->type != J_NULL) return E_UNKNOWN;
    if (BUILT_VERSION[0]) snprintf(out, len, "%s", BUILT_VERSION);
    else version_from_file_name(out, len);
    return out[0] ? OK : E_UNKNOWN;
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *buf, unsigned len) {
    ENTER(1);
    char version[96];
    int rc = driver_version(version, sizeof version);
    LEAVE(rc == OK ? copy_out(version, buf, len) : rc);
}

nvmlReturn_t nvmlSystemGetNVMLVersion(char *buf, unsigned len) {
    ENTER(1);
    char version[96], text[112];
    if (driver_version(version, sizeof version) != OK) snprintf(version, sizeof version, "0");
    snprintf(text, sizeof text, "13.%s", version);
    LEAVE(copy_out(text, buf, len));
}

static int cuda_version(int *out) {
    double v = 0;
    int rc = value_of(jget(cfg, "cuda_version"), &v);
    if (rc == OK) *out = (int)v;
    return rc;
}
nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *out) { ENTER(1); LEAVE(cuda_version(out)); }
#ifndef OMIT_nvmlSystemGetCudaDriverVersion_v2
nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *out) { ENTER(1); LEAVE(cuda_version(out)); }
#endif

#ifndef OMIT_nvmlSystemGetProcessName
nvmlReturn_t nvmlSystemGetProcessName(unsigned pid, char *buf, unsigned len) {
    ENTER(1);
    char key[32];
    snprintf(key, sizeof key, "%u", pid);
    jv *v = jget(jget(cfg, "process_names"), key);
    if (!v || v->type != J_STR) LEAVE(E_NOT_FOUND);
    LEAVE(error_code(v->str) >= 0 ? error_code(v->str) : copy_out(v->str, buf, len));
}
#endif

/* ---- enumeration -------------------------------------------------------------------------- */
static int count(unsigned *out) {
    *out = (unsigned)gpu_count();
    return OK;
}
nvmlReturn_t nvmlDeviceGetCount_v2(unsigned *out) { ENTER(1); LEAVE(count(out)); }
nvmlReturn_t nvmlDeviceGetCount(unsigned *out) { ENTER(1); LEAVE(count(out)); }

static int handle_by_index(unsigned index, nvmlDevice_t *out) {
    if (index >= (unsigned)gpu_count()) return E_INVALID_ARGUMENT;
    jv *err = jget(jat(jget(cfg, "gpus"), (int)index), "handle_error");
    if (err && err->type == J_STR) return error_code(err->str) < 0 ? E_UNKNOWN : error_code(err->str);
    if (lost(&gpu_handles[index])) return E_GPU_IS_LOST;
    *out = &gpu_handles[index];
    return OK;
}
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned i, nvmlDevice_t *out) { ENTER(1); LEAVE(handle_by_index(i, out)); }
nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned i, nvmlDevice_t *out) { ENTER(1); LEAVE(handle_by_index(i, out)); }

/* A GPU's or a MIG device's UUID (NVML takes both since R470). */
static OMITTABLE int handle_by_uuid(const char *uuid, nvmlDevice_t *out) {
    if (!uuid || !out) return E_INVALID_ARGUMENT;
    for (int g = 0; g < gpu_count(); g++) {
        jv *gpu = jat(jget(cfg, "gpus"), g), *migs = jget(gpu, "mig_devices"), *u = jget(gpu, "uuid");
        nvmlDevice_t found = u && u->type == J_STR && !strcmp(u->str, uuid) ? &gpu_handles[g] : NULL;
        for (int m = 0; !found && migs && migs->type == J_ARR && m < migs->n && m < MAX_MIG; m++) {
            u = jget(migs->items[m], "uuid");
            if (u && u->type == J_STR && !strcmp(u->str, uuid)) found = &mig_handles[g][m];
        }
        if (!found) continue;
        jv *err = jget(gpu, "handle_error");
        if (err && err->type == J_STR) return error_code(err->str) < 0 ? E_UNKNOWN : error_code(err->str);
        if (lost(found)) return E_GPU_IS_LOST;
        *out = found;
        return OK;
    }
    return E_NOT_FOUND;
}
#ifndef OMIT_nvmlDeviceGetHandleByUUID
nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *out) { ENTER(1); LEAVE(handle_by_uuid(uuid, out)); }
#endif

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *buf, unsigned len) { ENTER_DEV(d); LEAVE(dev_str(d, "uuid", buf, len)); }
nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *buf, unsigned len) { ENTER_DEV(d); LEAVE(dev_str(d, "name", buf, len)); }
UINT_GETTER(nvmlDeviceGetMinorNumber, "minor")

typedef struct {
    char busIdLegacy[16];
    unsigned domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

static int fill_pci(const char *bus_id, nvmlPciInfo_t *pci) {
    unsigned domain = 0, bus = 0, dev = 0, fn = 0;
    if (sscanf(bus_id, "%x:%x:%x.%x", &domain, &bus, &dev, &fn) != 4) return E_UNKNOWN;
    if (strlen(bus_id) >= sizeof pci->busId) return E_UNKNOWN;
    memset(pci, 0, sizeof *pci);
    memcpy(pci->busId, bus_id, strlen(bus_id) + 1);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04X:%02X:%02X.%X", domain, bus, dev, fn);
    pci->domain = domain; pci->bus = bus; pci->device = dev;
    pci->pciDeviceId = 0x233510DE;
    pci->pciSubSystemId = 0x18BE10DE;
    return OK;
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t d, nvmlPciInfo_t *pci) {
    ENTER_DEV(d);
    char bus_id[64];
    int rc = dev_str(d, "bus_id", bus_id, sizeof bus_id);
    LEAVE(rc == OK ? fill_pci(bus_id, pci) : rc);
}
nvmlReturn_t nvmlDeviceGetPciInfo_v2(nvmlDevice_t d, nvmlPciInfo_t *pci) { return nvmlDeviceGetPciInfo_v3(d, pci); }
nvmlReturn_t nvmlDeviceGetPciInfo(nvmlDevice_t d, nvmlPciInfo_t *pci) { return nvmlDeviceGetPciInfo_v3(d, pci); }

/* ---- static facts ------------------------------------------------------------------------- */
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;

static int memory(nvmlDevice_t d, unsigned long long *total, unsigned long long *used) {
    double t = 0, u = 0;
    int rc = dev_num(d, "memory_total", &t);
    if (rc == OK) rc = dev_num(d, "memory_used", &u);
    *total = (unsigned long long)t; *used = (unsigned long long)u;
    return rc;
}
/* The driver's own reservation: v1 counts it as used, v2 (what nvidia-smi shows) does not. */
static unsigned long long reserved(nvmlDevice_t d) {
    double r = 0;
    return dev_num(d, "memory_reserved", &r) == OK ? (unsigned long long)r : 0;
}
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *m) {
    ENTER_DEV(d);
    int rc = memory(d, &m->total, &m->used);
    m->used += reserved(d);
    m->free = m->total - m->used;
    LEAVE(rc);
}
#ifndef OMIT_nvmlDeviceGetMemoryInfo_v2
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *m) {
    ENTER_DEV(d);
    if (m->version != (unsigned)(sizeof *m | 2 << 24)) LEAVE(E_ARGUMENT_VERSION_MISMATCH);
    int rc = memory(d, &m->total, &m->used);
    m->reserved = reserved(d);
    m->free = m->total - m->used - m->reserved;
    LEAVE(rc);
}
#endif

typedef struct { unsigned long long total, free, used; } nvmlBAR1Memory_t;
nvmlReturn_t nvmlDeviceGetBAR1MemoryInfo(nvmlDevice_t d, nvmlBAR1Memory_t *m) {
    ENTER_DEV(d);
    double t = 0, u = 0;
    int rc = dev_num(d, "bar1_total", &t);
    if (rc == OK) rc = dev_num(d, "bar1_used", &u);
    m->total = (unsigned long long)t; m->used = (unsigned long long)u; m->free = m->total - m->used;
    LEAVE(rc);
}

UINT_GETTER(nvmlDeviceGetPowerManagementLimit, "power_limit_mw")
UINT_GETTER(nvmlDeviceGetPowerUsage, "power_usage_mw")
#ifndef OMIT_nvmlDeviceGetEnforcedPowerLimit
UINT_GETTER(nvmlDeviceGetEnforcedPowerLimit, "enforced_power_limit_mw")
#endif
#ifndef OMIT_nvmlDeviceGetPowerManagementDefaultLimit
UINT_GETTER(nvmlDeviceGetPowerManagementDefaultLimit, "default_power_limit_mw")
#endif
#ifndef OMIT_nvmlDeviceGetPcieReplayCounter
UINT_GETTER(nvmlDeviceGetPcieReplayCounter, "pcie_replay_count")
#endif

#define ULL_GETTER(name, key)                                           \
    nvmlReturn_t name(nvmlDevice_t d, unsigned long long *out) {        \
        ENTER_DEV(d);                                                   \
        double v = 0;                                                   \
        int rc = dev_num(d, key, &v);                                   \
        if (rc == OK) *out = (unsigned long long)v;                     \
        LEAVE(rc);                                                      \
    }
#ifndef OMIT_nvmlDeviceGetTotalEnergyConsumption
ULL_GETTER(nvmlDeviceGetTotalEnergyConsumption, "energy_mj")
#endif
#ifndef OMIT_nvmlDeviceGetCurrentClocksEventReasons
ULL_GETTER(nvmlDeviceGetCurrentClocksEventReasons, "clocks_event_reasons")
ULL_GETTER(nvmlDeviceGetCurrentClocksThrottleReasons, "clocks_event_reasons")
#endif

/* A config object, or the error its key answers instead. */
static OMITTABLE int object_of(jv *v) { return v && v->type == J_OBJ ? OK : shape_error(v); }

/* A config array of two numbers, or the error its key answers instead. */
static OMITTABLE int pair_of(jv *v, double *a, double *b) {
    if (!v || v->type != J_ARR || v->n != 2) return shape_error(v);
    int rc = value_of(v->items[0], a);
    return rc == OK ? value_of(v->items[1], b) : rc;
}

/* "power_limit_constraints_mw": [min, max] */
#ifndef OMIT_nvmlDeviceGetPowerManagementLimitConstraints
nvmlReturn_t nvmlDeviceGetPowerManagementLimitConstraints(nvmlDevice_t d, unsigned *min, unsigned *max) {
    ENTER_DEV(d);
    jv *dev = device(d);
    if (!dev) LEAVE(E_INVALID_ARGUMENT);
    double lo = 0, hi = 0;
    int rc = pair_of(jget(dev, "power_limit_constraints_mw"), &lo, &hi);
    if (rc == OK) { *min = (unsigned)lo; *max = (unsigned)hi; }
    LEAVE(rc);
}
#endif

/* "remapped_rows": {"correctable": n, "uncorrectable": n, "pending": bool, "failure": bool} */
#ifndef OMIT_nvmlDeviceGetRemappedRows
nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t d, unsigned *corrected, unsigned *uncorrected,
                                       unsigned *pending, unsigned *failure) {
    static const char *KEYS[] = {"correctable", "uncorrectable", "pending", "failure"};
    ENTER_DEV(d);
    jv *dev = device(d);
    if (!dev) LEAVE(E_INVALID_ARGUMENT);
    jv *rows = jget(dev, "remapped_rows");
    int rc = object_of(rows);
    double v[4] = {0};
    for (int i = 0; i < 4 && rc == OK; i++) rc = value_of(jget(rows, KEYS[i]), &v[i]);
    if (rc == OK) {
        *corrected = (unsigned)v[0]; *uncorrected = (unsigned)v[1];
        *pending = (unsigned)v[2]; *failure = (unsigned)v[3];
    }
    LEAVE(rc);
}
#endif
UINT_GETTER(nvmlDeviceGetMaxPcieLinkGeneration, "max_pcie_gen")
UINT_GETTER(nvmlDeviceGetMaxPcieLinkWidth, "max_pcie_width")
#ifndef OMIT_nvmlDeviceGetNumGpuCores
UINT_GETTER(nvmlDeviceGetNumGpuCores, "cores")
#endif
#ifndef OMIT_nvmlDeviceGetMemoryBusWidth
UINT_GETTER(nvmlDeviceGetMemoryBusWidth, "memory_bus_width")
#endif
UINT_GETTER(nvmlDeviceGetPersistenceMode, "persistence")

#ifndef OMIT_nvmlDeviceGetNumaNodeId
nvmlReturn_t nvmlDeviceGetNumaNodeId(nvmlDevice_t d, int *out) {
    ENTER_DEV(d);
    double v = 0;
    int rc = dev_num(d, "numa_node", &v);
    if (rc == OK) *out = (int)v;
    LEAVE(rc);
}
#endif

static const char *CLOCK_NAMES[] = {"graphics", "sm", "mem", "video"};
static int clock_value(nvmlDevice_t d, const char *prefix, unsigned type, unsigned *out) {
    if (type > 3) return E_INVALID_ARGUMENT;
    char key[32];
    snprintf(key, sizeof key, "%s%s", prefix, CLOCK_NAMES[type]);
    double v = 0;
    int rc = dev_num(d, key, &v);
    if (rc == OK) *out = (unsigned)v;
    return rc;
}
nvmlReturn_t nvmlDeviceGetMaxClockInfo(nvmlDevice_t d, unsigned type, unsigned *out) { ENTER_DEV(d); LEAVE(clock_value(d, "max_clock_", type, out)); }
nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t d, unsigned type, unsigned *out) { ENTER_DEV(d); LEAVE(clock_value(d, "clock_", type, out)); }

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t d, int *major, int *minor) {
    ENTER_DEV(d);
    jv *dev = device(d);
    if (!dev) LEAVE(E_INVALID_ARGUMENT);
    jv *cc = jget(dev, "compute_capability");
    double a = 0, b = 0;
    if (cc && cc->type == J_ARR && cc->n == 2) {
        int rc = value_of(cc->items[0], &a);
        if (rc == OK) rc = value_of(cc->items[1], &b);
        *major = (int)a; *minor = (int)b;
        LEAVE(rc);
    }
    LEAVE(value_of(cc, &a));
}

static int enable_state(nvmlDevice_t d, const char *key, unsigned *current, unsigned *pending) {
    double v = 0;
    int rc = dev_num(d, key, &v);
    if (rc == OK) *current = *pending = (unsigned)v;
    return rc;
}
nvmlReturn_t nvmlDeviceGetEccMode(nvmlDevice_t d, unsigned *cur, unsigned *pend) { ENTER_DEV(d); LEAVE(enable_state(d, "ecc", cur, pend)); }
#ifndef OMIT_nvmlDeviceGetMigMode
nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t d, unsigned *cur, unsigned *pend) { ENTER_DEV(d); LEAVE(enable_state(d, "mig_mode", cur, pend)); }
#endif

typedef struct {
    unsigned multiprocessorCount, sharedCopyEngineCount, sharedDecoderCount, sharedEncoderCount;
    unsigned sharedJpegCount, sharedOfaCount, gpuInstanceSliceCount, computeInstanceSliceCount;
    unsigned long long memorySizeMB;
} nvmlDeviceAttributes_t;
#ifndef OMIT_nvmlDeviceGetAttributes_v2
nvmlReturn_t nvmlDeviceGetAttributes_v2(nvmlDevice_t d, nvmlDeviceAttributes_t *a) {
    ENTER_DEV(d);
    double v = 0;
    int rc = dev_num(d, "multiprocessors", &v);
    memset(a, 0, sizeof *a);
    a->multiprocessorCount = (unsigned)v;
    LEAVE(rc);
}
#endif

/* Peer tables are arrays indexed by the peer's NVML index. */
static OMITTABLE int peer_value(nvmlDevice_t d1, nvmlDevice_t d2, const char *key, unsigned *out) {
    jv *dev = device(d1);
    if (!dev || !device(d2)) return E_INVALID_ARGUMENT;
    if (lost(d2)) return E_GPU_IS_LOST;
    jv *table = jget(dev, key);
    if (!table || table->type != J_ARR) return value_of(table, &(double){0});
    double v = 0;
    int rc = value_of(jat(table, d2->gpu), &v);
    if (rc == OK) *out = (unsigned)v;
    return rc;
}
#ifndef OMIT_nvmlDeviceGetTopologyCommonAncestor
nvmlReturn_t nvmlDeviceGetTopologyCommonAncestor(nvmlDevice_t a, nvmlDevice_t b, unsigned *out) { ENTER_DEV(a); LEAVE(peer_value(a, b, "topology", out)); }
#endif
#ifndef OMIT_nvmlDeviceGetP2PStatus
nvmlReturn_t nvmlDeviceGetP2PStatus(nvmlDevice_t a, nvmlDevice_t b, unsigned index, unsigned *out) {
    (void)index;
    ENTER_DEV(a);
    LEAVE(peer_value(a, b, "p2p", out));
}
#endif

/* "nvlinks": one entry per link: null (inactive) or the remote bus id (active). */
static OMITTABLE int nvlink(nvmlDevice_t d, unsigned link, jv **entry) {
    jv *dev = device(d);
    if (!dev) return E_INVALID_ARGUMENT;
    jv *links = jget(dev, "nvlinks");
    if (!links || links->type != J_ARR) return value_of(links, &(double){0});
    if (link >= (unsigned)links->n) return E_INVALID_ARGUMENT;
    *entry = links->items[link];
    return OK;
}
#ifndef OMIT_nvmlDeviceGetNvLinkState
nvmlReturn_t nvmlDeviceGetNvLinkState(nvmlDevice_t d, unsigned link, unsigned *active) {
    ENTER_DEV(d);
    jv *e = NULL;
    int rc = nvlink(d, link, &e);
    if (rc == OK) *active = e->type == J_STR;
    LEAVE(rc);
}
nvmlReturn_t nvmlDeviceGetNvLinkRemotePciInfo_v2(nvmlDevice_t d, unsigned link, nvmlPciInfo_t *pci) {
    ENTER_DEV(d);
    jv *e = NULL;
    int rc = nvlink(d, link, &e);
    if (rc == OK) rc = e->type == J_STR ? fill_pci(e->str, pci) : E_NOT_SUPPORTED;
    LEAVE(rc);
}
#endif

/* ---- MIG ---------------------------------------------------------------------------------- */
#ifndef OMIT_nvmlDeviceGetMaxMigDeviceCount
nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t d, unsigned *out) {
    ENTER_DEV(d);
    jv *migs = jget(device(d), "mig_devices");
    if (!migs || migs->type != J_ARR) LEAVE(shape_error(migs));
    *out = (unsigned)(migs->n < MAX_MIG ? migs->n : MAX_MIG);
    LEAVE(OK);
}
nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t d, unsigned index, nvmlDevice_t *out) {
    ENTER_DEV(d);
    if (!d || d->mig >= 0) LEAVE(E_INVALID_ARGUMENT);
    jv *m = jat(jget(device(d), "mig_devices"), (int)index);
    if (index >= MAX_MIG || !m || m->type != J_OBJ) LEAVE(E_NOT_FOUND);
    *out = &mig_handles[d->gpu][index];
    LEAVE(OK);
}
UINT_GETTER(nvmlDeviceGetGpuInstanceId, "gpu_instance_id")
UINT_GETTER(nvmlDeviceGetComputeInstanceId, "compute_instance_id")
#endif
#ifndef OMIT_nvmlDeviceIsMigDeviceHandle
nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t d, unsigned *is_mig) {
    ENTER_DEV(d);
    if (!device(d) || !is_mig) LEAVE(E_INVALID_ARGUMENT);
    *is_mig = d->mig >= 0;
    LEAVE(OK);
}
#endif
#ifndef OMIT_nvmlDeviceGetDeviceHandleFromMigDeviceHandle
nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t mig, nvmlDevice_t *out) {
    ENTER_DEV(mig);
    if (!device(mig) || mig->mig < 0 || !out) LEAVE(E_INVALID_ARGUMENT);
    *out = &gpu_handles[mig->gpu];
    LEAVE(OK);
}
#endif

/* ---- live status -------------------------------------------------------------------------- */
static OMITTABLE int temperature(nvmlDevice_t d, unsigned sensor, double *out) {
    return sensor == 0 ? dev_num(d, "temperature", out) : E_NOT_SUPPORTED;
}
#ifndef OMIT_nvmlDeviceGetTemperature
nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t d, unsigned sensor, unsigned *out) {
    ENTER_DEV(d);
    double v = 0;
    int rc = temperature(d, sensor, &v);
    if (rc == OK) *out = (unsigned)v;
    LEAVE(rc);
}
#endif

typedef struct { unsigned version, sensorType; int temperature; } nvmlTemperature_v1_t;
#ifndef OMIT_nvmlDeviceGetTemperatureV
nvmlReturn_t nvmlDeviceGetTemperatureV(nvmlDevice_t d, nvmlTemperature_v1_t *t) {
    ENTER_DEV(d);
    if (!t) LEAVE(E_INVALID_ARGUMENT);
    if (t->version != (unsigned)(sizeof *t | 1 << 24)) LEAVE(E_ARGUMENT_VERSION_MISMATCH);
    double v = 0;
    int rc = temperature(d, t->sensorType, &v);
    if (rc == OK) t->temperature = (int)v;
    LEAVE(rc);
}
#endif

/* "temperature_thresholds": {"shutdown": 95, "slowdown": 92, ...}, named as NVML's enum. */
#ifndef OMIT_nvmlDeviceGetTemperatureThreshold
nvmlReturn_t nvmlDeviceGetTemperatureThreshold(nvmlDevice_t d, unsigned threshold, unsigned *out) {
    static const char *KEYS[] = {"shutdown", "slowdown", "mem_max", "gpu_max", "acoustic_min",
                                 "acoustic_curr", "acoustic_max", "gps_curr"};
    ENTER_DEV(d);
    jv *dev = device(d);
    if (!dev || threshold >= sizeof KEYS / sizeof *KEYS) LEAVE(E_INVALID_ARGUMENT);
    jv *table = jget(dev, "temperature_thresholds");
    double v = 0;
    int rc = object_of(table);
    if (rc == OK) rc = value_of(jget(table, KEYS[threshold]), &v);
    if (rc == OK) *out = (unsigned)v;
    LEAVE(rc);
}
#endif

typedef struct { unsigned gpu, memory; } nvmlUtilization_t;
nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *u) {
    ENTER_DEV(d);
    double g = 0, m = 0;
    int rc = dev_num(d, "util_gpu", &g);
    if (rc == OK) rc = dev_num(d, "util_memory", &m);
    u->gpu = (unsigned)g; u->memory = (unsigned)m;
    LEAVE(rc);
}

static int codec(nvmlDevice_t d, const char *key, unsigned *util, unsigned *period) {
    double v = 0;
    int rc = dev_num(d, key, &v);
    *util = (unsigned)v;
    *period = 167000;
    return rc;
}
nvmlReturn_t nvmlDeviceGetEncoderUtilization(nvmlDevice_t d, unsigned *u, unsigned *p) { ENTER_DEV(d); LEAVE(codec(d, "util_encoder", u, p)); }
nvmlReturn_t nvmlDeviceGetDecoderUtilization(nvmlDevice_t d, unsigned *u, unsigned *p) { ENTER_DEV(d); LEAVE(codec(d, "util_decoder", u, p)); }

/* "ecc_errors": {"volatile"|"aggregate": {"corrected"|"uncorrected": {<location>: n, "total": n}}}
 * with NVML's locations in order; uncorrected volatile counts of the first three fall back to the
 * older keys ecc_l1, ecc_l2, ecc_device_memory. A total missing is the sum of the locations given. */
static const char *ECC_LOCATIONS[] = {"l1_cache", "l2_cache", "device_memory", "register_file",
                                      "texture_memory", "texture_shm", "cbu", "sram"};
static const char *ECC_LEGACY[] = {"ecc_l1", "ecc_l2", "ecc_device_memory"};

/* The counts object of one counter, or the error the config puts on the way to it. */
static OMITTABLE int ecc_counts(jv *dev, unsigned type, unsigned counter, jv **counts) {
    static const char *COUNTERS[] = {"volatile", "aggregate"}, *TYPES[] = {"corrected", "uncorrected"};
    if (type > 1 || counter > 1) return E_INVALID_ARGUMENT;
    const char *path[] = {"ecc_errors", COUNTERS[counter], TYPES[type]};
    jv *node = dev;
    for (size_t i = 0; i < sizeof path / sizeof *path && node; i++) {
        node = jget(node, path[i]);
        if (node && node->type == J_STR) return value_of(node, &(double){0});
    }
    *counts = node;
    return OK;
}

static OMITTABLE int ecc_location(jv *dev, unsigned type, unsigned counter, unsigned location, double *out) {
    jv *counts = NULL;
    int rc = ecc_counts(dev, type, counter, &counts);
    if (rc != OK) return rc;
    if (location >= sizeof ECC_LOCATIONS / sizeof *ECC_LOCATIONS) return E_INVALID_ARGUMENT;
    jv *v = jget(counts, ECC_LOCATIONS[location]);
    if (!v && type == 1 && counter == 0 && location < 3) v = jget(dev, ECC_LEGACY[location]);
    return value_of(v, out);
}

static OMITTABLE int ecc_total(jv *dev, unsigned type, unsigned counter, double *out) {
    jv *counts = NULL;
    int rc = ecc_counts(dev, type, counter, &counts);
    if (rc != OK) return rc;
    if (jget(counts, "total")) return value_of(jget(counts, "total"), out);
    int any = 0;
    *out = 0;
    for (unsigned loc = 0; loc < sizeof ECC_LOCATIONS / sizeof *ECC_LOCATIONS; loc++) {
        double v = 0;
        if (ecc_location(dev, type, counter, loc, &v) == OK) { *out += v; any = 1; }
    }
    return any ? OK : E_NOT_SUPPORTED;
}

#ifndef OMIT_nvmlDeviceGetMemoryErrorCounter
nvmlReturn_t nvmlDeviceGetMemoryErrorCounter(nvmlDevice_t d, unsigned type, unsigned counter,
                                             unsigned location, unsigned long long *out) {
    ENTER_DEV(d);
    jv *dev = device(d);
    if (!dev || !out) LEAVE(E_INVALID_ARGUMENT);
    double v = 0;
    int rc = ecc_location(dev, type, counter, location, &v);
    if (rc == OK) *out = (unsigned long long)v;
    LEAVE(rc);
}
#endif

#ifndef OMIT_nvmlDeviceGetTotalEccErrors
nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t d, unsigned type, unsigned counter,
                                         unsigned long long *out) {
    ENTER_DEV(d);
    jv *dev = device(d);
    if (!dev || !out) LEAVE(E_INVALID_ARGUMENT);
    double v = 0;
    int rc = ecc_total(dev, type, counter, &v);
    if (rc == OK) *out = (unsigned long long)v;
    LEAVE(rc);
}
#endif

/* ---- field values ------------------------------------------------------------------------ */
/* "field_values": {"<field id>" or "<field id>:<scope id>": value}, a value being a number (an
 * integer is unsigned_long_long, or signed_long_long when negative; a fraction is double),
 * {"type": "<NVML value type>", "value": n}, null or an error name (that field's nvmlReturn).
 * Some fields also read the key of their own getter, so the two agree; every other field id
 * answers NOT_SUPPORTED in its own nvmlReturn, as NVML does, and the call itself succeeds. */
typedef union {
    double dVal;
    unsigned uiVal;
    unsigned long ulVal;
    unsigned long long ullVal;
    long long sllVal;
    int siVal;
    unsigned short usVal;
} nvmlValue_t;
typedef struct {
    unsigned fieldId, scopeId;
    long long timestamp, latencyUsec;
    unsigned valueType;
    nvmlReturn_t nvmlReturn;
    nvmlValue_t value;
} nvmlFieldValue_t;
enum { VT_DOUBLE, VT_UINT, VT_ULONG, VT_ULL, VT_SLL, VT_SINT, VT_USHORT, VT_COUNT };
static const char *VALUE_TYPES[VT_COUNT] = {"double", "unsigned_int", "unsigned_long",
    "unsigned_long_long", "signed_long_long", "signed_int", "unsigned_short"};
static const struct { unsigned id; const char *key; int type; } NAMED_FIELDS[] = {
    {82, "memory_temperature", VT_UINT},   /* NVML_FI_DEV_MEMORY_TEMP */
    {83, "energy_mj", VT_ULL},             /* NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION */
    {94, "pcie_replay_count", VT_UINT},    /* NVML_FI_DEV_PCIE_REPLAY_COUNTER */
};

static OMITTABLE void set_value(nvmlFieldValue_t *f, int type, double v) {
    f->valueType = (unsigned)type;
    switch (type) {
    case VT_DOUBLE: f->value.dVal = v; break;
    case VT_UINT: f->value.uiVal = (unsigned)v; break;
    case VT_ULONG: f->value.ulVal = (unsigned long)v; break;
    case VT_ULL: f->value.ullVal = (unsigned long long)v; break;
    case VT_SLL: f->value.sllVal = (long long)v; break;
    case VT_SINT: f->value.siVal = (int)v; break;
    default: f->value.usVal = (unsigned short)v; break;
    }
}

static OMITTABLE int field_value(jv *dev, nvmlFieldValue_t *f) {
    char key[32];
    jv *table = jget(dev, "field_values"), *v = NULL;
    if (table && table->type == J_STR) return value_of(table, &(double){0});
    snprintf(key, sizeof key, "%u:%u", f->fieldId, f->scopeId);
    if (!(v = jget(table, key))) {
        snprintf(key, sizeof key, "%u", f->fieldId);
        v = jget(table, key);
    }
    double n = 0;
    int rc;
    if (v && v->type == J_OBJ) {
        jv *type = jget(v, "type");
        int t = 0;
        while (t < VT_COUNT && !(type && type->type == J_STR && !strcmp(type->str, VALUE_TYPES[t]))) t++;
        if (t == VT_COUNT) return E_UNKNOWN;
        if ((rc = value_of(jget(v, "value"), &n)) == OK) set_value(f, t, n);
        return rc;
    }
    if (v) {
        if ((rc = value_of(v, &n)) == OK)
            set_value(f, n != (double)(long long)n ? VT_DOUBLE : n < 0 ? VT_SLL : VT_ULL, n);
        return rc;
    }
    for (size_t i = 0; i < sizeof NAMED_FIELDS / sizeof *NAMED_FIELDS; i++)
        if (NAMED_FIELDS[i].id == f->fieldId) {
            if ((rc = value_of(jget(dev, NAMED_FIELDS[i].key), &n)) == OK) set_value(f, NAMED_FIELDS[i].type, n);
            return rc;
        }
    return E_NOT_SUPPORTED;
}

#ifndef OMIT_nvmlDeviceGetFieldValues
nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t d, int count, nvmlFieldValue_t *values) {
    ENTER_DEV(d);
    jv *dev = device(d);
    if (!dev || count <= 0 || !values) LEAVE(E_INVALID_ARGUMENT);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    for (int i = 0; i < count; i++) {
        nvmlFieldValue_t *f = &values[i];
        memset(&f->value, 0, sizeof f->value);
        f->timestamp = (long long)now.tv_sec * 1000000 + now.tv_nsec / 1000;
        f->latencyUsec = 0;
        f->nvmlReturn = field_value(dev, f);
    }
    LEAVE(OK);
}
#endif

nvmlReturn_t nvmlDeviceGetPcieThroughput(nvmlDevice_t d, unsigned counter, unsigned *out) {
    ENTER_DEV(d);
    double v = 0, delay_ms = 0;
    int rc = counter > 1 ? E_INVALID_ARGUMENT : dev_num(d, counter == 0 ? "pcie_tx_kbs" : "pcie_rx_kbs", &v);
    if (rc == OK) *out = (unsigned)v;
    value_of(jget(cfg, "pcie_delay_ms"), &delay_ms);
    pthread_mutex_unlock(&mu);
    __atomic_add_fetch(&pcie_calls, 1, __ATOMIC_SEQ_CST);
    /* the real call samples the bus for ~20 ms; sleep outside the lock as the driver would */
    sleep_ms(delay_ms);
    return rc;
}

typedef struct { unsigned pid; unsigned long long usedGpuMemory; unsigned gpuInstanceId, computeInstanceId; } nvmlProcessInfo_t;
typedef struct {
    unsigned pid;
    unsigned long long usedGpuMemory;
    unsigned gpuInstanceId, computeInstanceId;
    unsigned long long usedGpuCcProtectedMemory;
} nvmlProcessDetail_v1_t;
#define NOT_AVAILABLE_ULL (~0ULL) /* NVML_VALUE_NOT_AVAILABLE: pynvml reads it as None */

/* The process list `key` ("processes", "graphics_processes", "mps_processes") of a GPU or MIG
 * device: missing or null is none running; entries {pid, used_memory (null: not available),
 * gpu_instance_id, compute_instance_id (missing: 0xFFFFFFFF), cc_protected_memory (missing: 0)}. */
static OMITTABLE int process_list(nvmlDevice_t d, const char *key, jv **list, unsigned *n) {
    jv *dev = device(d);
    if (!dev) return E_INVALID_ARGUMENT;
    jv *procs = jget(dev, key);
    if (procs && procs->type == J_STR) return error_code(procs->str) < 0 ? E_UNKNOWN : error_code(procs->str);
    *list = procs;
    *n = procs && procs->type == J_ARR ? (unsigned)procs->n : 0;
    return OK;
}

static OMITTABLE void process_detail(const jv *proc, nvmlProcessDetail_v1_t *out) {
    double pid = 0, mem = 0, gi = 0xFFFFFFFF, ci = 0xFFFFFFFF, cc = 0;
    value_of(jget(proc, "pid"), &pid);
    value_of(jget(proc, "gpu_instance_id"), &gi);
    value_of(jget(proc, "compute_instance_id"), &ci);
    out->pid = (unsigned)pid;
    out->usedGpuMemory = value_of(jget(proc, "used_memory"), &mem) == OK ? (unsigned long long)mem : NOT_AVAILABLE_ULL;
    out->gpuInstanceId = (unsigned)gi;
    out->computeInstanceId = (unsigned)ci;
    /* missing: confidential computing off, nothing protected (pynvml cannot take "not available"
     * here: it assigns None to the ctypes field) */
    jv *protected_mem = jget(proc, "cc_protected_memory");
    out->usedGpuCcProtectedMemory = !protected_mem ? 0
        : value_of(protected_mem, &cc) == OK ? (unsigned long long)cc : NOT_AVAILABLE_ULL;
}

static int processes(nvmlDevice_t d, const char *key, unsigned *count, nvmlProcessInfo_t *infos) {
    jv *procs = NULL;
    unsigned n = 0;
    int rc = process_list(d, key, &procs, &n);
    if (rc != OK) return rc;
    if (!count) return E_INVALID_ARGUMENT;
    if (n == 0) { *count = 0; return OK; }
    if (!infos || *count < n) { *count = n; return E_INSUFFICIENT_SIZE; }
    for (unsigned i = 0; i < n; i++) {
        nvmlProcessDetail_v1_t p;
        process_detail(procs->items[i], &p);
        infos[i].pid = p.pid;
        infos[i].usedGpuMemory = p.usedGpuMemory;
        infos[i].gpuInstanceId = p.gpuInstanceId;
        infos[i].computeInstanceId = p.computeInstanceId;
    }
    *count = n;
    return OK;
}
#define PROCESS_GETTER(name, key) \
    nvmlReturn_t name(nvmlDevice_t d, unsigned *c, nvmlProcessInfo_t *p) { ENTER_DEV(d); LEAVE(processes(d, key, c, p)); }
#ifndef OMIT_nvmlDeviceGetComputeRunningProcesses_v3
PROCESS_GETTER(nvmlDeviceGetComputeRunningProcesses_v3, "processes")
#endif
PROCESS_GETTER(nvmlDeviceGetComputeRunningProcesses_v2, "processes")
#ifndef OMIT_nvmlDeviceGetGraphicsRunningProcesses_v3
PROCESS_GETTER(nvmlDeviceGetGraphicsRunningProcesses_v3, "graphics_processes")
#endif
#ifndef OMIT_nvmlDeviceGetGraphicsRunningProcesses_v2
PROCESS_GETTER(nvmlDeviceGetGraphicsRunningProcesses_v2, "graphics_processes")
#endif
#ifndef OMIT_nvmlDeviceGetMPSComputeRunningProcesses_v3
PROCESS_GETTER(nvmlDeviceGetMPSComputeRunningProcesses_v3, "mps_processes")
#endif
#ifndef OMIT_nvmlDeviceGetMPSComputeRunningProcesses_v2
PROCESS_GETTER(nvmlDeviceGetMPSComputeRunningProcesses_v2, "mps_processes")
#endif

/* nvmlDeviceGetRunningProcessDetailList (r550+): one call for the three lists, by mode. */
typedef struct {
    unsigned version, mode, numProcArrayEntries;
    nvmlProcessDetail_v1_t *procArray;
} nvmlProcessDetailList_v1_t;
#define PROCESS_DETAIL_LIST_V1 (unsigned)(sizeof(nvmlProcessDetailList_v1_t) | 1 << 24)
#ifndef OMIT_nvmlDeviceGetRunningProcessDetailList
nvmlReturn_t nvmlDeviceGetRunningProcessDetailList(nvmlDevice_t d, nvmlProcessDetailList_v1_t *list) {
    static const char *KEYS[] = {"processes", "graphics_processes", "mps_processes"};
    ENTER_DEV(d);
    if (!list || list->mode > 2) LEAVE(E_INVALID_ARGUMENT);
    if (list->version != PROCESS_DETAIL_LIST_V1) LEAVE(E_ARGUMENT_VERSION_MISMATCH);
    jv *procs = NULL;
    unsigned n = 0;
    int rc = process_list(d, KEYS[list->mode], &procs, &n);
    if (rc != OK) LEAVE(rc);
    if (n > 0 && (!list->procArray || list->numProcArrayEntries < n)) {
        list->numProcArrayEntries = n;
        LEAVE(E_INSUFFICIENT_SIZE);
    }
    for (unsigned i = 0; i < n; i++) process_detail(procs->items[i], &list->procArray[i]);
    list->numProcArrayEntries = n;
    LEAVE(OK);
}
#endif

/* ---- events ------------------------------------------------------------------------------- */
/* Events come from the JSON-lines file named by the config's "events_file", appended to while
 * the process runs: {"gpu": 0, "type": "xid", "data": 79} (optional "gpu_instance_id",
 * "compute_instance_id"). An event set delivers each line once: a line for a GPU it registered,
 * of a type it registered, appended after that registration. "type": "gpu_lost" makes the wait
 * return NVML_ERROR_GPU_IS_LOST instead (to every set registered on that GPU). */
static const struct { const char *name; unsigned long long bit; } EVENT_TYPES[] = {
    {"single_bit_ecc", 0x1}, {"double_bit_ecc", 0x2}, {"pstate", 0x4}, {"xid", 0x8},
    {"clock", 0x10}, {"power_source_change", 0x80}, {"mig_config_change", 0x100},
    {"single_bit_ecc_storm", 0x200}, {"dram_retirement", 0x400},
    {"dram_retirement_failure", 0x800}, {"non_fatal_poison", 0x1000}, {"fatal_poison", 0x2000},
    {"gpu_unavailable", 0x4000}, {"gpu_recovery_action", 0x8000},
};

/* An event type: a name from EVENT_TYPES or a number (the NVML bit itself). */
static OMITTABLE int event_bit(const jv *v, unsigned long long *bit) {
    if (v && v->type == J_NUM && v->num >= 0) { *bit = (unsigned long long)v->num; return 1; }
    for (size_t i = 0; v && v->type == J_STR && i < sizeof EVENT_TYPES / sizeof *EVENT_TYPES; i++)
        if (!strcmp(EVENT_TYPES[i].name, v->str)) { *bit = EVENT_TYPES[i].bit; return 1; }
    return 0;
}

/* "event_types": a list of names (or bits), or the mask as one number. */
static OMITTABLE int supported_events(nvmlDevice_t d, unsigned long long *mask) {
    jv *dev = device(d);
    if (!dev) return E_INVALID_ARGUMENT;
    jv *types = jget(dev, "event_types");
    if (!types || types->type != J_ARR) {
        double v = 0;
        int rc = value_of(types, &v);
        if (rc == OK) *mask = (unsigned long long)v;
        return rc;
    }
    *mask = 0;
    for (int i = 0; i < types->n; i++) {
        unsigned long long bit;
        if (!event_bit(types->items[i], &bit)) return E_UNKNOWN;
        *mask |= bit;
    }
    return OK;
}

typedef struct nvmlEventSet_st {
    struct nvmlEventSet_st *next;
    long offset;                        /* the next unread byte of the events file */
    unsigned char registered[MAX_GPUS];
    unsigned long long types[MAX_GPUS]; /* registered event types per GPU index */
    long since[MAX_GPUS];               /* the events file's size when that GPU was registered */
} *nvmlEventSet_t;
static struct nvmlEventSet_st *event_sets; /* the live sets: a freed or foreign handle is refused */

typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType, eventData;
    unsigned gpuInstanceId, computeInstanceId;
} nvmlEventData_t;

static OMITTABLE const char *events_path(void) {
    jv *v = jget(cfg, "events_file");
    return v && v->type == J_STR ? v->str : NULL;
}

static OMITTABLE long events_size(void) {
    struct stat st;
    const char *path = events_path();
    return path && stat(path, &st) == 0 ? (long)st.st_size : 0;
}

static OMITTABLE int live_set(nvmlEventSet_t set) {
    for (struct nvmlEventSet_st *s = event_sets; s; s = s->next)
        if (s == set) return 1;
    return 0;
}

/* One line of the events file for `set`: OK (filled `data`), E_TIMEOUT (not for this set),
 * E_GPU_IS_LOST, or E_UNKNOWN for a line that is not an event (reported on stderr). */
static OMITTABLE int deliver(nvmlEventSet_t set, long at, const char *line, nvmlEventData_t *data) {
    const char *p = line;
    skip_ws(&p);
    if (!*p) return E_TIMEOUT;
    jv *ev = parse_value(&p);
    jv *type = jget(ev, "type");
    double gpu = -1, value = 0, gi = 0xFFFFFFFF, ci = 0xFFFFFFFF;
    unsigned long long bit = 0;
    int is_lost = type && type->type == J_STR && !strcmp(type->str, "gpu_lost");
    int rc = E_TIMEOUT;
    if (!ev || ev->type != J_OBJ || value_of(jget(ev, "gpu"), &gpu) != OK || gpu < 0 ||
        gpu >= MAX_GPUS || (!is_lost && !event_bit(type, &bit))) {
        fprintf(stderr, "fakenvml: not an event: %s", line);
        rc = E_UNKNOWN;
        goto out;
    }
    int g = (int)gpu;
    if (!set->registered[g] || at < set->since[g]) goto out;
    if (is_lost) { rc = E_GPU_IS_LOST; goto out; }
    if (!(set->types[g] & bit)) goto out;
    value_of(jget(ev, "data"), &value);
    value_of(jget(ev, "gpu_instance_id"), &gi);
    value_of(jget(ev, "compute_instance_id"), &ci);
    data->device = &gpu_handles[g];
    data->eventType = bit;
    data->eventData = (unsigned long long)value;
    data->gpuInstanceId = (unsigned)gi;
    data->computeInstanceId = (unsigned)ci;
    rc = OK;
out:
    jfree(ev);
    return rc;
}

/* The next event for `set` from what the file holds now; E_TIMEOUT when there is none yet. */
static OMITTABLE int next_event(nvmlEventSet_t set, nvmlEventData_t *data) {
    const char *path = events_path();
    FILE *f = path ? fopen(path, "rb") : NULL;
    if (!f) return E_TIMEOUT;
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && st.st_size < set->offset) {
        /* replaced by a shorter file: a new stream, everything in it is new */
        set->offset = 0;
        memset(set->since, 0, sizeof set->since);
    }
    int rc = E_TIMEOUT;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    if (fseek(f, set->offset, SEEK_SET) == 0) {
        while (rc == E_TIMEOUT && (n = getline(&line, &cap, f)) > 0) {
            if (line[n - 1] != '\n') break; /* still being written: read it whole next time */
            long at = set->offset;
            set->offset += (long)n;
            rc = deliver(set, at, line, data);
        }
    }
    free(line);
    fclose(f);
    return rc;
}

static OMITTABLE double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Poll the events file every 10 ms until an event or the timeout, the lock released between. */
static OMITTABLE int wait_event(nvmlEventSet_t set, nvmlEventData_t *data, unsigned timeout_ms) {
    double deadline = now_ms() + timeout_ms;
    for (;;) {
        if (!live_set(set) || !data) return E_INVALID_ARGUMENT;
        int rc = next_event(set, data);
        double left = deadline - now_ms();
        if (rc != E_TIMEOUT || left <= 0) return rc;
        pthread_mutex_unlock(&mu);
        sleep_ms(left < 10 ? left : 10);
        pthread_mutex_lock(&mu);
        if ((rc = reload()) != OK) return rc;
    }
}

#ifndef OMIT_nvmlEventSetCreate
nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *out) {
    ENTER(1);
    if (!out) LEAVE(E_INVALID_ARGUMENT);
    nvmlEventSet_t set = calloc(1, sizeof *set);
    if (!set) LEAVE(E_MEMORY);
    set->offset = events_size();
    set->next = event_sets;
    event_sets = set;
    *out = set;
    LEAVE(OK);
}

nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    ENTER(1);
    for (struct nvmlEventSet_st **s = &event_sets; *s; s = &(*s)->next)
        if (*s == set) {
            *s = set->next;
            free(set);
            LEAVE(OK);
        }
    LEAVE(E_INVALID_ARGUMENT);
}

nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t d, unsigned long long *out) {
    ENTER_DEV(d);
    LEAVE(out ? supported_events(d, out) : E_INVALID_ARGUMENT);
}

nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t d, unsigned long long types, nvmlEventSet_t set) {
    ENTER_DEV(d);
    if (!live_set(set) || !device(d)) LEAVE(E_INVALID_ARGUMENT);
    /* events are registered on the GPU; those of a MIG instance carry its instance ids */
    if (d->mig >= 0) LEAVE(E_NOT_SUPPORTED);
    unsigned long long supported = 0;
    int rc = supported_events(d, &supported);
    if (rc != OK) LEAVE(rc);
    if (types & ~supported) LEAVE(E_NOT_SUPPORTED);
    if (!set->registered[d->gpu]) set->since[d->gpu] = events_size();
    set->registered[d->gpu] = 1;
    set->types[d->gpu] |= types;
    LEAVE(OK);
}

#ifndef OMIT_nvmlEventSetWait_v2
nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned timeout_ms) {
    ENTER(1);
    LEAVE(wait_event(set, data, timeout_ms));
}
#endif

/* The pre-MIG nvmlEventData_t: device, eventType, eventData (no instance ids to write). */
typedef struct { nvmlDevice_t device; unsigned long long eventType, eventData; } nvmlEventData_v1_t;
nvmlReturn_t nvmlEventSetWait(nvmlEventSet_t set, nvmlEventData_v1_t *data, unsigned timeout_ms) {
    ENTER(1);
    nvmlEventData_t full;
    int rc = data ? wait_event(set, &full, timeout_ms) : E_INVALID_ARGUMENT;
    if (rc == OK) { data->device = full.device; data->eventType = full.eventType; data->eventData = full.eventData; }
    LEAVE(rc);
}
#endif
