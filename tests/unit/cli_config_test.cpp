// Daemon configuration: the config file format, kernel command line words, precedence and
// validation (docs/cli.md).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "agent/api/http_server.hpp"  // ParseListenAddress
#include "agent/base/fd.hpp"
#include "agent/cli/config.hpp"

namespace byoi {
namespace {

namespace fs = std::filesystem;

TEST(ConfigTextTest, ParsesKeyValueLinesCommentsAndQuotes) {
  Result<std::map<std::string, std::string>> parsed = ParseConfigText(
      "# byoi-agent\n"
      "\n"
      "listen = 127.0.0.1:9999\n"
      "  token=\"a b#c\"   # quoted: spaces and # kept\n"
      "backend-url = https://backend.example/api  # dash accepted\n"
      "console =\n"
      "reboot = none\r\n");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  std::map<std::string, std::string> expected{{"listen", "127.0.0.1:9999"},
                                              {"token", "a b#c"},
                                              {"backend_url", "https://backend.example/api"},
                                              {"console", ""},
                                              {"reboot", "none"}};
  EXPECT_EQ(*parsed, expected);
}

TEST(ConfigTextTest, RejectsBadLinesNamingTheLine) {
  struct Case {
    const char* text;
    const char* detail;
  } cases[] = {
      {"listen 0.0.0.0:1\n", "config file line 1: expected `key = value`"},
      {"# x\nlisen = 0.0.0.0:1\n", "config file line 2: unknown key lisen"},
      {"reboot = none\nreboot = reboot\n", "config file line 2: reboot given twice"},
      {"token = \"abc\n", "config file line 1: unterminated quote"},
      {"token = \"abc\" def\n", "config file line 1: text after the closing quote"},
  };
  for (const Case& c : cases) {
    Result<std::map<std::string, std::string>> parsed = ParseConfigText(c.text);
    ASSERT_FALSE(parsed.ok()) << c.text;
    EXPECT_EQ(parsed.status().code(), Code::kInvalid);
    EXPECT_EQ(parsed.status().detail(), c.detail);
  }
}

TEST(KernelCmdlineTest, TakesByoiWordsOnly) {
  std::vector<std::string> unknown;
  auto words = ParseKernelCmdline(
      "BOOT_IMAGE=/vmlinuz root=/dev/ram0 quiet byoi.token=s3cret byoi.backend-url=https://b/x "
      "\"byoi.agent_id=rack 1\" byoi.listen=\"0.0.0.0:80\" byoi.frobnicate=1 byoi.reboot=none "
      "byoi.reboot=poweroff -- byoi.disk=/dev/sda\n",
      &unknown);
  std::map<std::string, std::string> expected{{"token", "s3cret"},
                                              {"backend_url", "https://b/x"},
                                              {"agent_id", "rack 1"},
                                              {"listen", "0.0.0.0:80"},
                                              {"reboot", "poweroff"}};
  EXPECT_EQ(words, expected);
  EXPECT_EQ(unknown, std::vector<std::string>{"byoi.frobnicate"});
}

TEST(ListenAddressTest, Table) {
  struct Case {
    const char* text;
    bool ok;
    const char* address;
    uint16_t port;
  } cases[] = {
      {"0.0.0.0:9999", true, "0.0.0.0", 9999},
      {"127.0.0.1:0", true, "127.0.0.1", 0},
      {"[::]:9999", true, "::", 9999},
      {"[::1]:80", true, "::1", 80},
      {"9999", false, "", 0},
      {"localhost:80", false, "", 0},
      {"1.2.3.4:65536", false, "", 0},
      {"1.2.3.4:", false, "", 0},
      {"[::1]80", false, "", 0},
      {"::1:80", false, "", 0},
      {"1.2.3.4:8x", false, "", 0},
  };
  for (const Case& c : cases) {
    Result<ListenAddress> a = ParseListenAddress(c.text);
    ASSERT_EQ(a.ok(), c.ok) << c.text;
    if (!c.ok) continue;
    EXPECT_EQ(a->address, c.address);
    EXPECT_EQ(a->port, c.port);
  }
}

class DaemonConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("byoi-config-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    sources_.config_file = (dir_ / "byoi-agent.conf").string();
    sources_.kernel_cmdline = (dir_ / "cmdline").string();
    Write("cmdline", "quiet\n");
    Write("byoi-agent.conf", "token = file-token-0123456789\n");
  }
  void TearDown() override { fs::remove_all(dir_); }
  void Write(const std::string& name, const std::string& text) {
    ASSERT_TRUE(WriteFileAtomic((dir_ / name).string(), text).ok());
  }
  Result<DaemonConfig> Load() { return LoadDaemonConfig(sources_); }

  fs::path dir_;
  ConfigSources sources_;
  std::map<std::string, std::string>& flags_ = sources_.flags;
};

TEST_F(DaemonConfigTest, DefaultsForTheDaemon) {
  Result<DaemonConfig> c = Load();
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->listen, "0.0.0.0:9999");
  EXPECT_EQ(c->state_file, "/run/byoi-agent/state.json");
  EXPECT_EQ(c->console, "/dev/console");
  EXPECT_EQ(c->job.reboot, RebootMode::kReboot);
  EXPECT_EQ(c->job.efivars, "/sys/firmware/efi/efivars");
  EXPECT_EQ(c->job.efi_boot_order, BootOrderPolicy::kFirst);
  EXPECT_EQ(c->poll_interval, std::chrono::milliseconds(5000));
  EXPECT_TRUE(c->backend_url.empty());
}

TEST_F(DaemonConfigTest, FlagBeatsKernelCmdlineBeatsConfigFile) {
  Write("byoi-agent.conf",
        "token = file-token-0123456789\nlisten = 127.0.0.1:1\nreboot = poweroff\ndisk = /dev/sdb\n"
        "memory_limit = 2G\npoll_interval = 0.5\nconsole = /dev/ttyS0\n");
  Write("cmdline",
        "quiet byoi.token=cmdline-token-0123456789 byoi.listen=127.0.0.1:2 byoi.disk=/dev/sdc\n");
  flags_["listen"] = "127.0.0.1:3";
  Result<DaemonConfig> c = Load();
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->listen, "127.0.0.1:3");              // flag
  EXPECT_EQ(c->token, "cmdline-token-0123456789");  // kernel command line over file
  EXPECT_EQ(c->job.disk, "/dev/sdc");               // kernel command line over file
  EXPECT_EQ(c->job.reboot, RebootMode::kPowerOff);  // file only
  EXPECT_EQ(c->job.memory_limit, 2ull << 30);
  EXPECT_EQ(c->poll_interval, std::chrono::milliseconds(500));
  EXPECT_EQ(c->console, "/dev/ttyS0");
  // The sources name keys and where they came from, never values.
  std::string all;
  for (const auto& [key, where] : c->sources) all += key + " (" + where + ");";
  EXPECT_NE(all.find("token (kernel command line)"), std::string::npos);
  EXPECT_NE(all.find("listen (command line)"), std::string::npos);
  EXPECT_EQ(all.find("cmdline-token"), std::string::npos);
}

TEST_F(DaemonConfigTest, DownloadOptionsComeFromEverySource) {
  Result<DaemonConfig> defaults = Load();
  ASSERT_TRUE(defaults.ok()) << defaults.status().ToString();
  EXPECT_EQ(defaults->job.ca_bundle, "");
  EXPECT_FALSE(defaults->job.insecure);
  EXPECT_EQ(defaults->job.stall_timeout, std::chrono::seconds(60));
  EXPECT_EQ(defaults->job.retry_delay, std::chrono::seconds(1));
  EXPECT_EQ(defaults->job.download_attempts, 10);
  EXPECT_EQ(defaults->job.connections, 4);

  Write("ca.pem", "-----BEGIN CERTIFICATE-----\n");
  Write("byoi-agent.conf", "token = 0123456789abcdef\nca_bundle = " + (dir_ / "ca.pem").string() +
                               "\nstall_timeout = 2.5\nretry_delay = 0\ndownload_attempts = 4\n"
                               "connections = 2\n");
  // A bare word on the kernel command line switches verification off.
  Write("cmdline", "quiet byoi.insecure byoi.download_attempts=7 byoi.connections=8\n");
  flags_["stall_timeout"] = "9";
  Result<DaemonConfig> c = Load();
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->job.ca_bundle, (dir_ / "ca.pem").string());
  EXPECT_TRUE(c->job.insecure);
  EXPECT_EQ(c->job.stall_timeout, std::chrono::seconds(9));  // flag over file
  EXPECT_EQ(c->job.retry_delay, std::chrono::seconds(0));    // file
  EXPECT_EQ(c->job.download_attempts, 7);                    // kernel command line over file
  EXPECT_EQ(c->job.connections, 8);                          // kernel command line over file
  flags_["connections"] = "1";
  ASSERT_TRUE(Load().ok());
  EXPECT_EQ(Load()->job.connections, 1);  // flag over kernel command line
  flags_.erase("connections");

  Write("cmdline", "byoi.insecure=false\n");
  ASSERT_TRUE(Load().ok());
  EXPECT_FALSE(Load()->job.insecure);
}

TEST_F(DaemonConfigTest, TheSwarmsDhtIsOffUnlessItsNodesAreGiven) {
  ASSERT_TRUE(Load().ok());
  EXPECT_EQ(Load()->job.swarm_dht, "");
  Write("cmdline", "byoi.swarm_dht=10.0.0.2:6881,dht.rack.example:6881,[fd00::2]:6881\n");
  ASSERT_TRUE(Load().ok());
  EXPECT_EQ(Load()->job.swarm_dht, "10.0.0.2:6881,dht.rack.example:6881,[fd00::2]:6881");
}

TEST_F(DaemonConfigTest, UnknownKernelWordsAreWarningsNotErrors) {
  Write("cmdline", "byoi.tokn=x\n");
  Result<DaemonConfig> c = Load();
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->warnings,
            std::vector<std::string>{"ignoring unknown kernel command line option byoi.tokn"});
}

TEST_F(DaemonConfigTest, BackendUrlLosesItsTrailingSlash) {
  flags_["backend_url"] = "https://backend.example/api//";
  ASSERT_TRUE(Load().ok());
  EXPECT_EQ(Load()->backend_url, "https://backend.example/api");
}

TEST_F(DaemonConfigTest, BadValuesNameTheKeyAndItsSource) {
  struct Case {
    const char* file;
    const char* detail;
  } cases[] = {
      {"token = 0123456789abcdef\nreboot = halt\n", "must be none, reboot, poweroff or kexec"},
      {"token = 0123456789abcdef\nefi_boot_order = last\n",
       "must be first, after-network, bootnext or none"},
      {"token = 0123456789abcdef\nmemory_limit = lots\n", "not a size"},
      {"token = 0123456789abcdef\nlisten = 9999\n", "expected ADDR:PORT"},
      {"token = 0123456789abcdef\npoll_interval = 0\n", "must be a number of seconds"},
      {"token = 0123456789abcdef\nlog_level = chatty\n", "must be trace"},
      {"token = 0123456789abcdef\nca_bundle = /no/such/ca.pem\n", "no such file: /no/such/ca.pem"},
      {"token = 0123456789abcdef\ninsecure = maybe\n", "must be true or false"},
      {"token = 0123456789abcdef\nstall_timeout = 0\n", "between 0.1 and 3600"},
      {"token = 0123456789abcdef\nretry_delay = -1\n", "between 0 and 300"},
      {"token = 0123456789abcdef\ndownload_attempts = 2.5\n", "whole number between 1 and 1000"},
      {"token = 0123456789abcdef\ndownload_attempts = 0\n", "whole number between 1 and 1000"},
      {"token = 0123456789abcdef\nconnections = 0\n", "whole number between 1 and 16"},
      {"token = 0123456789abcdef\nconnections = 17\n", "whole number between 1 and 16"},
      {"token = 0123456789abcdef\nconnections = four\n", "whole number between 1 and 16"},
      {"token = 0123456789abcdef\nbackend_url = ftp://x\n", "must start with http:// or https://"},
      {"token = 0123456789 abcdef\n", "must be printable ASCII"},
      {"token = 0123456789abcdef\ntls_cert = /c.pem\n",
       "tls_cert and tls_key must be given together"},
      {"token = 0123456789abcdef\nswarm_dht = 10.0.0.2\n", "expected HOST:PORT[,HOST:PORT...]"},
      {"token = 0123456789abcdef\nswarm_dht = 10.0.0.2:6881,\n", "expected HOST:PORT"},
      {"token = 0123456789abcdef\nswarm_dht = 10.0.0.2:0\n", "expected HOST:PORT"},
      {"token = 0123456789abcdef\nswarm_dht = a b:6881\n", "expected HOST:PORT"},
      {"token = 0123456789abcdef\nswarm_dht = [::1:6881\n", "expected HOST:PORT"},
      {"listen = 0.0.0.0:1\n", "no API token"},
      {"listen = off\ntoken = 0123456789abcdef\n", "nothing to do"},
  };
  for (const Case& c : cases) {
    Write("byoi-agent.conf", c.file);
    Result<DaemonConfig> loaded = Load();
    ASSERT_FALSE(loaded.ok()) << c.file;
    EXPECT_EQ(loaded.status().code(), Code::kInvalid);
    EXPECT_NE(loaded.status().detail().find(c.detail), std::string::npos)
        << c.file << " -> " << loaded.status().detail();
  }
  Write("byoi-agent.conf", "token = 0123456789abcdef\nreboot = halt\n");
  EXPECT_NE(Load().status().detail().find("reboot (from " + sources_.config_file + ")"),
            std::string::npos);
}

// `proxy` (agent/fetch/proxy.hpp): an http or https URL with a host, from every source; its
// errors name the key and its source, with the exact reason, and never echo the value, which may
// carry a password.
TEST_F(DaemonConfigTest, ProxyIsAnHttpOrHttpsUrlWithAHostAndItsErrorsNeverEchoIt) {
  ASSERT_TRUE(Load().ok());
  EXPECT_EQ(Load()->job.proxy, "");  // default: the environment, else none

  const char* good[] = {
      "http://cache.example:3128",
      "https://cache.example:3129",
      "HTTP://cache.example",
      "http://10.0.0.5:3128/",
      "http://[fd00::5]:3128",
      "http://byoi:s3cr%40t@cache.example:3128",
      "",  // not set: the environment decides
  };
  for (const char* url : good) {
    Write("byoi-agent.conf", std::string("token = 0123456789abcdef\nproxy = \"") + url + "\"\n");
    Result<DaemonConfig> c = Load();
    ASSERT_TRUE(c.ok()) << url << ": " << c.status().ToString();
    EXPECT_EQ(c->job.proxy, url);
  }
  Write("byoi-agent.conf", "token = 0123456789abcdef\nproxy = http://file.example:1\n");
  Write("cmdline", "quiet byoi.proxy=http://kernel.example:2\n");
  ASSERT_TRUE(Load().ok());
  EXPECT_EQ(Load()->job.proxy, "http://kernel.example:2");
  flags_["proxy"] = "http://flag.example:3";
  ASSERT_TRUE(Load().ok());
  EXPECT_EQ(Load()->job.proxy, "http://flag.example:3");

  const std::string expected =
      " (expected http://HOST[:PORT] or https://HOST[:PORT], optionally with USER:PASSWORD@ "
      "before the host)";
  struct Case {
    const char* url;
    const char* reason;
  } bad[] = {
      {"socks5://pw-user:pw-secret@cache.example:1080", "must start with http:// or https://"},
      {"ftp://pw-user:pw-secret@cache.example", "must start with http:// or https://"},
      {"pw-user:pw-secret@cache.example:3128", "must start with http:// or https://"},
      {"http://pw-user:pw-secret@:3128", "not a URL: "},
      {"http://pw-user:pw-secret@cache.example:0", "has a port outside 1-65535"},
      {"http://pw-user:pw-secret@cache.example:70000", "not a URL: "},
      {"http://pw-user:pw-secret@cache.example:3128/pw-path",
       "has a path (a proxy is a host and a "
       "port)"},
      {"http://pw-user:pw-secret@cache.example:3128/?pw-query", "has a query or a fragment"},
      {"http://pw-user:pw-secret@cache.example:3128#pw-fragment", "has a query or a fragment"},
      {"http://pw-user:pw-secret@cache example:3128", "not a URL: "},
  };
  flags_.clear();
  Write("cmdline", "quiet\n");
  for (const Case& c : bad) {
    flags_["proxy"] = c.url;
    Result<DaemonConfig> loaded = Load();
    ASSERT_FALSE(loaded.ok()) << c.url;
    EXPECT_EQ(loaded.status().code(), Code::kInvalid);
    const std::string& detail = loaded.status().detail();
    EXPECT_TRUE(detail.starts_with(std::string("proxy (from command line): ") + c.reason))
        << c.url << " -> " << detail;
    EXPECT_TRUE(detail.ends_with(expected)) << detail;
    EXPECT_EQ(loaded.status().ToString().find("pw-"), std::string::npos) << detail;
  }
  // From the config file, the error names the file.
  flags_.clear();
  Write("byoi-agent.conf", "token = 0123456789abcdef\nproxy = socks5://pw-user:pw-secret@x\n");
  EXPECT_EQ(Load().status().detail(), "proxy (from " + sources_.config_file +
                                          "): must start with http:// or https://" + expected);
}

TEST_F(DaemonConfigTest, TokenErrorsNeverEchoTheToken) {
  Write("byoi-agent.conf", "token = sec ret\n");
  Result<DaemonConfig> c = Load();
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().ToString().find("sec"), std::string::npos);
}

TEST_F(DaemonConfigTest, ATokenShorterThan16CharactersIsRefusedNamingTheMinimum) {
  Write("byoi-agent.conf", "token = 0123456789abcde\n");  // 15
  Result<DaemonConfig> c = Load();
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kInvalid);
  EXPECT_EQ(c.status().detail(),
            "token (from " + sources_.config_file +
                "): the token must be at least 16 characters long (it has 15)");
  EXPECT_EQ(c.status().ToString().find("0123456789abcde"), std::string::npos);
  flags_["token"] = "0123456789abcdef";  // 16
  ASSERT_TRUE(Load().ok());
  EXPECT_EQ(Load()->token, "0123456789abcdef");
}

// A token file keeps the token out of /proc/PID/cmdline (docs/cli.md: every option is also a
// config key and a kernel command line word).
class TokenFileTest : public DaemonConfigTest {
 protected:
  // Writes `text` to token.txt with `mode`; returns its path.
  std::string TokenFile(const std::string& text, mode_t mode = 0600) {
    std::string path = (dir_ / "token.txt").string();
    Write("token.txt", text);
    EXPECT_EQ(::chmod(path.c_str(), mode), 0);
    return path;
  }
};

TEST_F(TokenFileTest, TheFilesOneLineIsTheTokenWithoutItsLineEnding) {
  Write("byoi-agent.conf", "");
  for (const char* text :
       {"from-the-file-0123456789\n", "from-the-file-0123456789", "from-the-file-0123456789\r\n"}) {
    flags_["token_file"] = TokenFile(text);
    Result<DaemonConfig> c = Load();
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    EXPECT_EQ(c->token, "from-the-file-0123456789");
  }
  flags_.erase("token_file");
  for (mode_t mode : {0400, 0600}) {
    Write("byoi-agent.conf", "token_file = " + TokenFile("config-key-file-0123456789\n", mode));
    ASSERT_TRUE(Load().ok()) << std::oct << mode;
    EXPECT_EQ(Load()->token, "config-key-file-0123456789");
  }
  Write("byoi-agent.conf", "");
  Write("cmdline", "quiet byoi.token_file=" + TokenFile("kernel-file-0123456789\n"));
  ASSERT_TRUE(Load().ok());
  EXPECT_EQ(Load()->token, "kernel-file-0123456789");
}

TEST_F(TokenFileTest, BadFilesAreRefusedNamingTheFileNeverTheToken) {
  std::string path = (dir_ / "token.txt").string();
  struct Case {
    std::string text;
    mode_t mode;
    std::string detail;
  } cases[] = {
      {"secret-0123456789abcdef\n", 0644,
       path + " is accessible to group or others (mode 0644): make it 0600 or 0400"},
      {"secret-0123456789abcdef\n", 0640,
       path + " is accessible to group or others (mode 0640): make it 0600 or 0400"},
      {"", 0600, path + " holds no token"},
      {"\n", 0600, path + " holds no token"},
      {"secret-0123456789abcdef\nsecond line\n", 0600, path + " holds more than one line"},
      {"secret-0123\n", 0600,
       "the token in the file must be at least 16 characters long (it has 11)"},
      {"secret 0123456789abcdef\n", 0600,
       "the token in the file must be printable ASCII without spaces"},
      {std::string(5000, 's'), 0600, "larger than 4096 bytes"},
  };
  Write("byoi-agent.conf", "");
  for (const Case& c : cases) {
    flags_["token_file"] = TokenFile(c.text, c.mode);
    Result<DaemonConfig> loaded = Load();
    ASSERT_FALSE(loaded.ok()) << c.detail;
    EXPECT_EQ(loaded.status().code(), Code::kInvalid) << c.detail;
    EXPECT_EQ(loaded.status().detail().rfind("token_file (from command line): ", 0), 0u)
        << loaded.status().detail();
    EXPECT_NE(loaded.status().detail().find(c.detail), std::string::npos)
        << loaded.status().detail();
    EXPECT_EQ(loaded.status().ToString().find("secret"), std::string::npos);
  }
  flags_["token_file"] = (dir_ / "absent.txt").string();
  EXPECT_EQ(Load().status().detail(), "token_file (from command line): reading " +
                                          (dir_ / "absent.txt").string() +
                                          ": No such file or directory");
}

// token and token_file are one setting: from one source both is an error, from two the higher
// precedence wins as for every key.
TEST_F(TokenFileTest, TokenAndTokenFileFromOneSourceIsAnErrorElsePrecedenceDecides) {
  std::string path = TokenFile("from-the-file-0123456789\n");
  Write("byoi-agent.conf", "token = from-the-config-0123456789\ntoken_file = " + path + "\n");
  Result<DaemonConfig> c = Load();
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().detail(), "token and token_file are both given on the " +
                                     sources_.config_file + ": give one of them");
  flags_["token"] = "from-the-flag-0123456789";
  flags_["token_file"] = path;
  EXPECT_EQ(Load().status().detail(),
            "token and token_file are both given on the command line: give one of them");

  flags_.erase("token");  // the file from the command line beats the config file's token
  Write("byoi-agent.conf", "token = from-the-config-0123456789\n");
  ASSERT_TRUE(Load().ok());
  EXPECT_EQ(Load()->token, "from-the-file-0123456789");
  flags_.erase("token_file");  // the kernel's token beats the config file's token_file
  Write("byoi-agent.conf", "token_file = " + path + "\n");
  Write("cmdline", "byoi.token=from-the-kernel-0123456789\n");
  ASSERT_TRUE(Load().ok());
  EXPECT_EQ(Load()->token, "from-the-kernel-0123456789");
}

TEST_F(DaemonConfigTest, PollingOnlyNeedsNoToken) {
  Write("byoi-agent.conf", "listen = off\nbackend_url = http://127.0.0.1:1\n");
  Result<DaemonConfig> c = Load();
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->listen, "off");
}

TEST_F(DaemonConfigTest, MissingExplicitConfigFileIsAnErrorMissingCmdlineIsNot) {
  sources_.kernel_cmdline = (dir_ / "no-cmdline").string();
  flags_["token"] = "0123456789abcdef";
  EXPECT_TRUE(Load().ok());
  sources_.config_file = (dir_ / "absent.conf").string();
  Result<DaemonConfig> c = Load();
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kIo);
}

}  // namespace
}  // namespace byoi
