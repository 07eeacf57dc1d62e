// Readiness probe used by ops/stack when the Python client (confluent_kafka) is not importable.
// Run with the Java source launcher against the cached broker jars:
//   java -cp 'lib/*' ops/kafka/Probe.java 127.0.0.1:9092 5
// Exits 0 once a metadata request (describeCluster) answers within the timeout (seconds).
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;

public final class Probe {
  public static void main(String[] args) throws Exception {
    String bootstrap = args[0];
    int timeoutMs = (int) (Double.parseDouble(args.length > 1 ? args[1] : "5") * 1000);
    Properties props = new Properties();
    props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, Integer.toString(timeoutMs));
    props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, Integer.toString(timeoutMs));
    try (Admin admin = Admin.create(props)) {
      int brokers = admin.describeCluster().nodes().get(timeoutMs, TimeUnit.MILLISECONDS).size();
      if (brokers == 0) {
        System.exit(1);
      }
    } catch (Exception e) {
      System.exit(1);
    }
  }
}
