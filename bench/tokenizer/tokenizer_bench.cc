// Tokenizer encode throughput, single-threaded: the same measurement as
// `node tests/tokenizer/reference_encode.mjs bench FAMILY FILE ITERS` so the two compare.
//
// Usage: tokenizer_bench TOKENIZER_DIR FILE [--iters N=5] [--whole] [--family NAME]
//   Encodes every line of FILE (a .jsonl file holds one JSON string per line; any other file is
//   plain text split at '\n'; --whole encodes the file as one text instead) with
//   add_special_tokens=false: one warm-up pass, then N timed passes. Prints one JSON line:
//   {"impl":"cpp","family":..,"file":..,"lines":..,"bytes":..,"tokens":..,"iters":..,
//    "load_s":..,"mb_per_s":..,"mb_per_s_best":..}; MB is 10^6 bytes of UTF-8 input,
//   mb_per_s uses the median pass.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizer/tokenizer.h"

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

int Usage() {
  std::cerr << "usage: tokenizer_bench TOKENIZER_DIR FILE [--iters N] [--whole] [--family NAME]\n";
  return 2;
}

std::string Basename(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return Usage();
  const std::string dir = argv[1], file = argv[2];
  int iters = 5;
  bool whole = false;
  std::string family = Basename(dir);
  for (int i = 3; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--iters" && i + 1 < argc) {
      iters = std::atoi(argv[++i]);
    } else if (arg == "--whole") {
      whole = true;
    } else if (arg == "--family" && i + 1 < argc) {
      family = argv[++i];
    } else {
      return Usage();
    }
  }
  if (iters <= 0) return Usage();

  std::ifstream in(file, std::ios::binary);
  if (!in) {
    std::cerr << "tokenizer_bench: cannot open " << file << "\n";
    return 1;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string content = ss.str();
  std::vector<std::string> texts;
  const bool jsonl = file.size() > 6 && file.compare(file.size() - 6, 6, ".jsonl") == 0;
  if (whole && !jsonl) {
    texts.push_back(content);
  } else {
    std::istringstream lines(content);
    std::string line;
    while (std::getline(lines, line)) {
      if (!jsonl) {
        texts.push_back(line);
        continue;
      }
      try {
        texts.push_back(nlohmann::json::parse(line).get<std::string>());
      } catch (const std::exception& e) {
        std::cerr << "tokenizer_bench: " << file << ": " << e.what() << "\n";
        return 1;
      }
    }
    if (whole) {  // a .jsonl file as one text: its inputs joined by newlines
      std::string joined;
      for (const std::string& t : texts) joined += t + "\n";
      texts = {joined};
    }
  }
  size_t bytes = 0;
  for (const std::string& t : texts) bytes += t.size();

  const auto t0 = Clock::now();
  auto loaded = knockout::tokenizer::Tokenizer::Load(dir);
  const double load_s = Seconds(t0, Clock::now());
  if (!loaded.ok()) {
    std::cerr << "tokenizer_bench: " << loaded.status().ToString() << "\n";
    return 1;
  }
  const auto& tok = **loaded;

  size_t tokens = 0;
  auto pass = [&]() -> bool {
    tokens = 0;
    for (const std::string& t : texts) {
      auto enc = tok.Encode(t, false);
      if (!enc.ok()) {
        std::cerr << "tokenizer_bench: " << enc.status().ToString() << "\n";
        return false;
      }
      tokens += enc->ids.size();
    }
    return true;
  };
  if (!pass()) return 1;  // warm-up
  std::vector<double> secs;
  for (int i = 0; i < iters; ++i) {
    const auto a = Clock::now();
    if (!pass()) return 1;
    secs.push_back(Seconds(a, Clock::now()));
  }
  std::vector<double> sorted = secs;
  std::sort(sorted.begin(), sorted.end());
  const size_t n = sorted.size();
  const double median = n % 2 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
  auto round3 = [](double x) {
    return static_cast<double>(static_cast<long long>(x * 1000 + 0.5)) / 1000;
  };

  nlohmann::json out = {
      {"impl", "cpp"},
      {"family", family},
      {"file", Basename(file)},
      {"lines", texts.size()},
      {"bytes", bytes},
      {"tokens", tokens},
      {"iters", iters},
      {"load_s", round3(load_s)},
      {"mb_per_s", round3(bytes / 1e6 / median)},
      {"mb_per_s_best", round3(bytes / 1e6 / sorted.front())},
  };
  std::cout << out.dump() << std::endl;
  return 0;
}
