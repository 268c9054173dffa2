// Hook is the JVM of make test-real: it prints "ready", then idles until a signal; its shutdown
// hook takes 1 s and writes "done" to /out/hook at its end.
import java.nio.file.Files;
import java.nio.file.Path;

public class Hook {
    public static void main(String[] args) throws Exception {
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                Thread.sleep(1000);
                Files.writeString(Path.of("/out/hook"), "done\n");
            } catch (Exception e) {
                e.printStackTrace();
            }
        }));
        System.out.println("ready");
        System.out.flush();
        Thread.sleep(Long.MAX_VALUE);
    }
}
