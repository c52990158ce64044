/*
 * Embedded single-node OpenSearch for ceindex integration tests: 2.19.1 (this project) and 3.5.0
 * (docker/opensearch3-node compiles this same file against 3.5.0).
 *
 * Runs org.opensearch.node.Node directly instead of going through
 * org.opensearch.bootstrap.OpenSearch, which means: no root-user refusal, no security manager,
 * no bootstrap checks, no JarHell check of the application classpath.
 *
 * Plugin loading:
 *  - transport-netty4 (module jar + netty), lang-painless (jar + antlr/asm + painless SPI) and
 *    analysis-common (which, like k-NN, extends lang-painless) are module bundles in
 *    target/modules/<name> with the descriptors from src/main/modules (Maven Central ships modules
 *    only as jars), and opensearch-knn / opensearch-neural-search are plugin bundles
 *    (target/plugins/<name>: the unpacked Maven Central plugin zips). Each bundle directory is
 *    symlinked into path.home/modules resp. path.home/plugins, and the regular PluginsService loads
 *    them like the real distribution does: own class loaders, extended.plugins (k-NN extends
 *    lang-painless, neural-search extends opensearch-knn), SPI extensions (k-NN's painless
 *    allow-list) and proper names/versions in _cat/plugins.
 *
 * Usage: java -cp target/opensearch-node.jar:target/lib/* org.ceindex.opensearch.TestNode -Ekey=value ...
 * System property ceindex.node.bundles overrides the directory holding modules/ and plugins/
 * (default: the directory of opensearch-node.jar, i.e. target/).
 *
 * Not for production use.
 */
package org.ceindex.opensearch;

import java.io.IOException;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.apache.logging.log4j.LogManager;
import org.apache.logging.log4j.Logger;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.plugins.Plugin;

public final class TestNode {

    /**
     * Plugins loaded from the application classpath. Empty by default: everything is loaded as a
     * bundle, exactly like the real distribution. Extra classpath plugins can be given with the
     * system property ceindex.node.classpathPlugins (comma-separated class names).
     */
    static final String[] CLASSPATH_PLUGINS = {};

    /** Bundles that must exist below the bundle source directory. */
    static final String[] REQUIRED_BUNDLES = {
        "modules/transport-netty4",
        "modules/lang-painless",
        "modules/analysis-common",
        "plugins/opensearch-knn", };

    /** Every plugin is a bundle, loaded by the public constructor (2.x and 3.x alike; 3.x dropped the protected
     *  constructor that took classpath plugin classes). */
    static final class EmbeddedNode extends Node {
        EmbeddedNode(Environment env, Collection<Class<? extends Plugin>> plugins) {
            super(env);
            if (!plugins.isEmpty()) {
                throw new IllegalArgumentException("classpath plugins are not supported: install them as bundles");
            }
        }
    }

    private TestNode() {}

    static Map<String, String> defaults() {
        Map<String, String> d = new LinkedHashMap<>();
        d.put("cluster.name", "ceindex-test");
        d.put("node.name", "ceindex-test-node");
        d.put("network.host", "127.0.0.1");
        d.put("http.port", "9200");
        d.put("transport.port", "9300");
        d.put("discovery.type", "single-node");
        // test disks are often nearly full; never flip indices to read-only because of watermarks
        d.put("cluster.routing.allocation.disk.threshold_enabled", "false");
        d.put("action.auto_create_index", "true");
        d.put("bootstrap.memory_lock", "false");
        return d;
    }

    @SuppressWarnings("unchecked")
    static List<Class<? extends Plugin>> pluginClasses() {
        List<Class<? extends Plugin>> out = new ArrayList<>();
        ClassLoader cl = TestNode.class.getClassLoader();
        List<String> names = new ArrayList<>(List.of(CLASSPATH_PLUGINS));
        for (String extra : System.getProperty("ceindex.node.classpathPlugins", "").split(",")) {
            if (!extra.isBlank()) {
                names.add(extra.trim());
            }
        }
        for (String name : names) {
            try {
                out.add((Class<? extends Plugin>) Class.forName(name, true, cl));
            } catch (ClassNotFoundException e) {
                throw new IllegalStateException("classpath plugin class " + name + " is not on the classpath", e);
            }
        }
        return out;
    }

    static Path bundleSource() throws Exception {
        String prop = System.getProperty("ceindex.node.bundles");
        if (prop != null && !prop.isEmpty()) {
            return Path.of(prop).toAbsolutePath();
        }
        Path jar = Path.of(TestNode.class.getProtectionDomain().getCodeSource().getLocation().toURI());
        // target/opensearch-node.jar or target/classes: both live in target/
        return jar.toAbsolutePath().getParent();
    }

    /** Symlink every bundle dir of source/kind into home/kind (replacing stale links). */
    static List<String> linkBundles(Path source, Path home, String kind) throws IOException {
        Path target = home.resolve(kind);
        Files.createDirectories(target);
        List<String> names = new ArrayList<>();
        Path src = source.resolve(kind);
        if (!Files.isDirectory(src)) {
            return names;
        }
        try (DirectoryStream<Path> ds = Files.newDirectoryStream(src)) {
            for (Path bundle : ds) {
                if (!Files.isRegularFile(bundle.resolve("plugin-descriptor.properties"))) {
                    continue;
                }
                Path link = target.resolve(bundle.getFileName().toString());
                if (Files.exists(link, LinkOption.NOFOLLOW_LINKS)) {
                    if (!Files.isSymbolicLink(link)) {
                        names.add(bundle.getFileName().toString()); // user-provided copy, keep it
                        continue;
                    }
                    Files.delete(link);
                }
                Files.createSymbolicLink(link, bundle.toAbsolutePath());
                names.add(bundle.getFileName().toString());
            }
        }
        Collections.sort(names);
        return names;
    }

    public static void main(String[] args) throws Exception {
        // must happen before log4j initialises: we shut logging down ourselves after the node closed
        System.setProperty("log4j.shutdownHookEnabled", "false");
        System.setProperty("log4j2.disable.jmx", "true");
        System.setProperty("log4j2.formatMsgNoLookups", "true");

        Map<String, String> settingsMap = defaults();
        for (String arg : args) {
            if (arg.startsWith("-E")) {
                String kv = arg.substring(2);
                int eq = kv.indexOf('=');
                if (eq <= 0) {
                    System.err.println("bad setting (expected -Ekey=value): " + arg);
                    System.exit(64);
                }
                settingsMap.put(kv.substring(0, eq), kv.substring(eq + 1));
            } else if (arg.equals("-h") || arg.equals("--help")) {
                System.out.println("usage: TestNode [-Ekey=value ...]");
                return;
            } else {
                System.err.println("unknown argument: " + arg + " (settings are passed as -Ekey=value)");
                System.exit(64);
            }
        }
        if (!settingsMap.containsKey("path.home")) {
            settingsMap.put("path.home", Files.createTempDirectory("ceindex-opensearch-").toString());
        }
        Path home = Path.of(settingsMap.get("path.home")).toAbsolutePath();
        settingsMap.putIfAbsent("path.data", home.resolve("data").toString());
        settingsMap.putIfAbsent("path.logs", home.resolve("logs").toString());
        Files.createDirectories(home.resolve("config"));
        Path bundles = bundleSource();
        for (String required : REQUIRED_BUNDLES) {
            if (!Files.isRegularFile(bundles.resolve(required).resolve("plugin-descriptor.properties"))) {
                System.err.println("missing bundle " + bundles.resolve(required) + " (run mvn package in docker/opensearch-node)");
                System.exit(78);
            }
        }
        List<String> modules = linkBundles(bundles, home, "modules");
        List<String> installed = linkBundles(bundles, home, "plugins");
        Files.createDirectories(Path.of(settingsMap.get("path.data")));
        Files.createDirectories(Path.of(settingsMap.get("path.logs")));

        Logger logger = LogManager.getLogger(TestNode.class);
        Settings.Builder sb = Settings.builder();
        settingsMap.forEach(sb::put);
        Settings settings = sb.build();

        Environment env = InternalSettingsPreparer.prepareEnvironment(
            settings,
            Collections.emptyMap(),
            home.resolve("config"),
            () -> settingsMap.get("node.name")
        );

        List<Class<? extends Plugin>> plugins = pluginClasses();
        logger.info("bundles from [{}]: modules {} plugins {}", bundles, modules, installed);

        final Node node;
        try {
            node = new EmbeddedNode(env, plugins);
        } catch (Throwable t) {
            logger.error("failed to construct node", t);
            LogManager.shutdown();
            System.exit(1);
            return;
        }

        final CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                logger.info("shutdown requested, closing node");
                node.close();
                if (!node.awaitClose(20, TimeUnit.SECONDS)) {
                    logger.warn("node did not close within 20s");
                }
                logger.info("node closed");
            } catch (Throwable t) {
                logger.error("error while closing node", t);
            } finally {
                stopped.countDown();
                LogManager.shutdown();
            }
        }, "ceindex-node-shutdown"));

        // non-daemon thread keeps the JVM alive until the shutdown hook ran
        Thread keepAlive = new Thread(() -> {
            try {
                stopped.await();
            } catch (InterruptedException ignored) {
                Thread.currentThread().interrupt();
            }
        }, "ceindex-node-keepalive");
        keepAlive.setDaemon(false);
        keepAlive.start();

        try {
            node.start();
        } catch (Throwable t) {
            logger.error("failed to start node", t);
            System.exit(1);
        }
        logger.info(
            "ceindex test node started: cluster [{}] http [{}:{}] data [{}] classpath plugins {} modules {} plugins {}",
            settingsMap.get("cluster.name"),
            settingsMap.get("network.host"),
            settingsMap.get("http.port"),
            settingsMap.get("path.data"),
            plugins.stream().map(Class::getSimpleName).toList(),
            modules,
            installed
        );
    }
}
