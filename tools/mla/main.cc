// `mla`: MLA decode on files (decode), the benchmark report (bench), one attention layer of a
// checkpoint (layer) and its timing demo (demo), the pipeline simulator (sim).
#include <cstdio>
#include <exception>
#include <string>

#include "mla/status.h"
#include "mla/commands.h"

namespace {

// A failed command exits with rc; in a tensor-parallel group of several ranks it ends every rank
// (MPI_Abort), since the others would wait in the layer's all-reduce for this one.
int fail(int rc, const char* kind, const char* what) {
  mla::Communicator* g = mla::tool::tp_group();
  const bool group = g && g->size() > 1;
  const std::string who = group ? " (rank " + std::to_string(g->rank()) + " of " +
                                      std::to_string(g->size()) + ")" : "";
  std::fprintf(stderr, "mla: %s%s: %s\n", kind, who.c_str(), what);
  if (group) g->abort(rc);
  mla::tool::close_tp_group();
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"mla: multi-head latent attention (DeepSeek MLA) decode on CPUs"};
  app.require_subcommand(1);
  mla::tool::add_decode_command(app);
  mla::tool::add_bench_command(app);
  mla::tool::add_formats_command(app);
  mla::tool::add_layer_command(app);
  mla::tool::add_demo_command(app);
  mla::tool::add_sim_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  } catch (const mla::tool::CheckFailed& e) {
    return fail(1, "check failed", e.what());
  } catch (const mla::Error& e) {
    return fail(2, "error", e.what());
  } catch (const std::exception& e) {
    return fail(3, "internal error", e.what());
  }
  mla::tool::close_tp_group();
  return 0;
}
