// `mla`: MLA decode on files (decode), the benchmark report (bench), one attention layer of a
// checkpoint (layer) and its timing demo (demo), the pipeline simulator (sim).
#include <cstdio>
#include <exception>

#include "mla/status.h"
#include "mla/commands.h"

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
    std::fprintf(stderr, "mla: check failed: %s\n", e.what());
    return 1;
  } catch (const mla::Error& e) {
    std::fprintf(stderr, "mla: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mla: internal error: %s\n", e.what());
    return 3;
  }
  return 0;
}
